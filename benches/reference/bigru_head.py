"""PyTorch's side of benches/head.rs: a training step of the frozen-encoder workflow's head
(pipelines/imdb-bert-bigru.yaml, benches/reference/imdb_bigru.py's BiGru): a 2-layer
bidirectional nn.GRU (hidden 256, dropout 0.25 between the layers) over encoder features
[64, 128, 384], the last states of both directions, dropout 0.25, Linear(512, 1),
BCEWithLogitsLoss, Adam lr 1e-3 (forward, backward, step).

Usage: bigru_head.py THREADS STEPS
Prints one JSON line: seconds per step and CPU-seconds per step (medians over STEPS after one warm-up).
"""
import json, statistics, sys, time

import torch
import torch.nn as nn

threads, steps = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
torch.manual_seed(0)
BATCH, TIME, FEATURES, HIDDEN = 64, 128, 384, 256


class BiGru(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(FEATURES, HIDDEN, num_layers=2, bidirectional=True, batch_first=True, dropout=0.25)
        self.dropout = nn.Dropout(0.25)
        self.out = nn.Linear(2 * HIDDEN, 1)

    def forward(self, features):
        states, _ = self.rnn(features)
        last = torch.cat([states[:, -1, :HIDDEN], states[:, 0, HIDDEN:]], 1)
        return self.out(self.dropout(last)).squeeze(1)


model = BiGru().train()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
loss_fn = nn.BCEWithLogitsLoss()
features = torch.randn(BATCH, TIME, FEATURES) * 0.5
labels = (torch.arange(BATCH) % 2).float()
walls, cpus = [], []
for step in range(steps + 1):
    wall, cpu = time.perf_counter(), time.process_time()
    loss = loss_fn(model(features), labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    if step:
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
print(json.dumps({"step_seconds": statistics.median(walls), "step_cpu_seconds": statistics.median(cpus)}))
