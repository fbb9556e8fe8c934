"""The frozen-encoder workflow of pipelines/imdb-bert-bigru.yaml in PyTorch and `transformers`, as
the course notebook runs it: BertModel under torch.no_grad(), its last hidden states fed to a
2-layer bidirectional GRU (hidden 256, dropout 0.25 between the layers and on the concatenated
last states of both directions), a linear layer to one logit, BCEWithLogitsLoss, Adam lr 1e-3,
batch 128, the epoch with the best validation loss kept, then test accuracy.

It reads the reviews our pipeline chose (the `split` stage's train/validation/test parquet files),
so both sides train and test on the same rows; tokenization (the checkpoint's tokenizer,
truncation at MAX_LENGTH), the encoder and the head are all this script's own. As in ours, each
batch is padded to its longest row, features are stored in f16 and are zero at padding, the GRU
runs over the padded batch, and the last state is the forward direction's at the last real token
and the backward direction's at the first.

Usage: imdb_bigru.py CHECKPOINT_DIR SPLIT_DIR SEED THREADS [MAX_LENGTH] [EPOCHS]
Prints one JSON line: per-epoch losses and validation accuracy, the kept epoch, test accuracy,
encode and train seconds.
"""
import json, sys, time

import pyarrow.parquet as pq
import torch
from torch import nn
from transformers import AutoTokenizer, BertModel

checkpoint, split_dir, seed, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
max_length = int(sys.argv[5]) if len(sys.argv) > 5 else 128
epochs = int(sys.argv[6]) if len(sys.argv) > 6 else 5
torch.set_num_threads(threads)
torch.manual_seed(seed)
tokenizer = AutoTokenizer.from_pretrained(checkpoint)
encoder = BertModel.from_pretrained(checkpoint, add_pooling_layer=False).eval()


def encode(split):
    """Features [rows, max_length, hidden] (f16, zero at padding), lengths and labels of a split."""
    table = pq.read_table(f"{split_dir}/{split}.parquet").to_pydict()
    encoded = tokenizer(table["text"], truncation=True, max_length=max_length)["input_ids"]
    lengths = torch.tensor([len(ids) for ids in encoded])
    features = torch.zeros(len(encoded), max_length, encoder.config.hidden_size, dtype=torch.float16)
    with torch.no_grad():
        for start in range(0, len(encoded), 32):
            rows = encoded[start:start + 32]
            width = max(len(ids) for ids in rows)
            ids = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids in rows])
            mask = (torch.arange(width)[None, :] < lengths[start:start + 32, None]).long()
            states = encoder(input_ids=ids, attention_mask=mask).last_hidden_state * mask[..., None]
            features[start:start + len(rows), :width] = states.half()
    return features, lengths, torch.tensor(table["label"], dtype=torch.float32)


class BiGru(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.rnn = nn.GRU(encoder.config.hidden_size, hidden_size, num_layers=2, bidirectional=True,
                          batch_first=True, dropout=0.25)
        self.dropout = nn.Dropout(0.25)
        self.out = nn.Linear(2 * hidden_size, 1)
        self.hidden_size = hidden_size

    def forward(self, features, lengths):
        states, _ = self.rnn(features)
        rows = torch.arange(len(lengths))
        last = torch.cat([states[rows, lengths - 1, :self.hidden_size], states[:, 0, self.hidden_size:]], 1)
        return self.out(self.dropout(last)).squeeze(1)


def batches(data, shuffle):
    features, lengths, labels = data
    order = torch.randperm(len(labels)) if shuffle else torch.arange(len(labels))
    for start in range(0, len(labels), 128):
        rows = order[start:start + 128]
        width = int(lengths[rows].max())
        yield features[rows, :width].float(), lengths[rows], labels[rows]


def evaluate(model, data):
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for features, lengths, labels in batches(data, False):
            logits = model(features, lengths)
            loss += float(nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="sum"))
            correct += int(((logits > 0).float() == labels).sum())
    return loss / len(data[2]), correct / len(data[2])


start = time.time()
train, validation, test = (encode(split) for split in ("train", "validation", "test"))
encode_seconds = time.time() - start
model = BiGru(256)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
history, best, best_state = [], None, None
start = time.time()
for epoch in range(1, epochs + 1):
    model.train()
    total, rows = 0.0, 0
    for features, lengths, labels in batches(train, True):
        loss = nn.functional.binary_cross_entropy_with_logits(model(features, lengths), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total, rows = total + float(loss) * len(labels), rows + len(labels)
    eval_loss, eval_accuracy = evaluate(model, validation)
    history.append({"epoch": epoch, "loss": total / rows, "eval_loss": eval_loss, "eval_accuracy": eval_accuracy})
    print(json.dumps(history[-1]), file=sys.stderr, flush=True)
    if best is None or eval_loss < best["eval_loss"]:
        best, best_state = history[-1], {k: v.clone() for k, v in model.state_dict().items()}
model.load_state_dict(best_state)
test_loss, test_accuracy = evaluate(model, test)
print(json.dumps({"side": "pytorch", "seed": seed, "threads": threads, "rows": {"train": len(train[2]),
                  "validation": len(validation[2]), "test": len(test[2])}, "epochs": history,
                  "best_epoch": best["epoch"], "validation_accuracy": best["eval_accuracy"],
                  "test_accuracy": test_accuracy, "test_loss": test_loss,
                  "encode_seconds": encode_seconds, "train_seconds": time.time() - start}))
