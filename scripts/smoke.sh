#!/usr/bin/env bash
# The whole pipeline on real MovieLens-100K and the real MiniLM in a few minutes: train a few steps, export,
# score offline, evaluate, serve one request from the Python API. Not a quality run (see configs/ml100k_minilm.yaml).
#   bash scripts/smoke.sh            # or: bash scripts/smoke.sh configs/ml1m_minilm.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:-configs/ml100k_minilm.yaml}
out=runs/smoke
step() { printf '\n== %s (%ds elapsed)\n' "$1" "$SECONDS"; }
rm -rf "$out"  # one run, so the export below finds its one best checkpoint
step "train"
python train.py fit --config "$config" --config configs/smoke.yaml
step "export"
python scripts/export_index.py --checkpoint "$out" --out exports/smoke --overwrite true --report_users 100
step "score offline"
python scripts/score_offline.py --export exports/smoke --out "$out/recs.parquet" --k 20
step "evaluate"
python scripts/evaluate.py --recs "$out/recs.parquet" --export exports/smoke
step "serve one request"
python - <<'PY'
from recsys_tt.serving.recommender import Recommender
from recsys_tt.serving.requests import RecommendRequest

rec = Recommender.load("exports/smoke")
user = str(rec.export.users["user_id"].iloc[0])
reply = rec.recommend(RecommendRequest(user_id=user, k=5, seed=0))
print(f"user {user}:", [(i["item_id"], round(i["propensity"], 3)) for i in reply["items"]])
PY
step "done"
