"""Serve recommendations over HTTP from an export folder (FastAPI on uvicorn; docs at /docs).

    python serve.py --export exports/ml100k --host 127.0.0.1 --port 8000 --log_dir logs/ml100k
    python serve.py --config configs/serve.yaml --export exports/ml100k
    curl -s localhost:8000/recommend -H 'content-type: application/json' -d '{"user_id": "196", "k": 10}'

The folder is checked before the server listens; a mismatched or incomplete one is refused with the reason.
"""

from __future__ import annotations

import logging

from recsys_tt.cli import log_to_console, run
from recsys_tt.serving.recommender import Recommender
from recsys_tt.serving.requests import ServingConfig


def main(export: str, host: str = "127.0.0.1", port: int = 8000, log_dir: str | None = None,
         serving: ServingConfig = ServingConfig()) -> None:  # noqa: B008 (a frozen config)
    """Load an export folder and serve it.

    Args:
        export: folder written by scripts/export_index.py.
        host: interface to listen on.
        port: TCP port.
        log_dir: propensity log folder (impressions and feedback as JSONL); None serves without logging.
        serving: candidates, MMR, exploration and request limits.
    """
    import uvicorn

    from recsys_tt.serving.http_api import create_app

    log_to_console()
    recommender = Recommender.load(export, serving, log_dir=log_dir)
    logging.getLogger("recsys_tt.serve").info("Serving %s on http://%s:%d (API docs at /docs, health at /health)",
                                              export, host, port)
    uvicorn.run(create_app(recommender), host=host, port=port, log_level="warning",
                limit_concurrency=serving.max_connections, timeout_keep_alive=serving.keep_alive_seconds)


if __name__ == "__main__":
    run(main)
