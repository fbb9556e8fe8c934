"""PyTorch's side of benches/bert.rs: a fine-tuning step of BertForSequenceClassification
(batch 8 x 128 tokens: forward, backward, clip_grad_norm_ 1.0, AdamW lr 5e-5) and the frozen
encoder's throughput (BertModel under no_grad, batch 32 x 128), on the same checkpoint and
the same kind of batches as ours.

Usage: bert_speed.py CHECKPOINT THREADS STEPS
Prints one JSON line: seconds per step (median over STEPS after one warm-up) and sequences/s.
"""
import json, statistics, sys, time

import torch
from transformers import BertForSequenceClassification, BertModel

checkpoint, threads, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
torch.manual_seed(0)


def batch(rows):
    ids = torch.randint(1000, 30000, (rows, 128))
    ids[:, 0], ids[:, -1] = 101, 102
    return ids, torch.zeros_like(ids), torch.ones_like(ids)


model = BertForSequenceClassification.from_pretrained(checkpoint, num_labels=2).train()
optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.0)
ids, types, mask = batch(8)
labels = torch.randint(0, 2, (8,))
times = []
for step in range(steps + 1):
    start = time.perf_counter()
    loss = model(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad()
    if step:
        times.append(time.perf_counter() - start)
encoder = BertModel.from_pretrained(checkpoint).eval()
ids, types, mask = batch(32)
forward = []
with torch.no_grad():
    for step in range(steps + 1):
        start = time.perf_counter()
        encoder(input_ids=ids, token_type_ids=types, attention_mask=mask)
        if step:
            forward.append(time.perf_counter() - start)
print(json.dumps({"step_seconds": statistics.median(times), "sequences_per_second": 32 / statistics.median(forward)}))
