"""Train a two-tower recommender (LightningCLI): fit, then test the checkpoint that validated best.

CPU, MovieLens-100K + MiniLM:         python train.py fit --config configs/ml100k_minilm.yaml
One GPU, MovieLens-1M + MiniLM:       python train.py fit --config configs/ml1m_minilm_gpu.yaml
Resume an interrupted run:            python train.py fit --config CONFIG --ckpt_path RUN/checkpoints/last.ckpt
Evaluate a checkpoint:                python train.py test --config CONFIG --ckpt_path PATH
GPUs, decoder LLM, DDP on all:        python train.py fit --config configs/ml100k_qwen_gpu.yaml
Every option:                         python train.py fit --help
"""

from recsys_tt.training.lightning_cli import run

if __name__ == "__main__":
    run()
