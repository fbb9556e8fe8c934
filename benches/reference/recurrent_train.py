"""PyTorch's LSTM and GRU at the sizes benches/train.rs trains ours: ../shared/bench/pytorch's
bench_train.py (its data, batching, timing and output) with two more models, `lstm` and `gru`:
Embedding(V, 64) -> nn.LSTM or nn.GRU(64, 96, batch_first) -> output at the last position ->
Linear(96, 2), batch 8, 128 tokens, cross-entropy, no clipping (the shared `rnn` model with the
other cells; oneDNN runs both on CPU).

Usage: recurrent_train.py SHARED_BENCH_DIR --model lstm|gru [bench_train.py's options]
"""
import os
import sys

import torch.nn as nn

shared = os.path.abspath(sys.argv.pop(1))
sys.path.insert(0, shared)
import bench_train  # noqa: E402
import common as C  # noqa: E402


class Recurrent(nn.Module):
    """The shared SimpleRNN with `cell` in place of nn.RNN."""

    def __init__(self, vocab, cell, emb=64, hidden=96, classes=2):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.rnn = cell(emb, hidden, num_layers=1, batch_first=True)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.rnn(self.emb(x))
        return self.fc(out[:, -1, :])


C.MODELS["lstm"] = (lambda v: Recurrent(v, nn.LSTM), 8, 128, "ce", None)
C.MODELS["gru"] = (lambda v: Recurrent(v, nn.GRU), 8, 128, "ce", None)

if __name__ == "__main__":
    os.chdir(shared)
    bench_train.main()
