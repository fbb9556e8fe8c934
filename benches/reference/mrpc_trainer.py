"""The fine-tuning workflow of pipelines/mrpc-bert.yaml with Hugging Face's Trainer, as the
HF course (chapter 3) runs it: AutoModelForSequenceClassification(num_labels=2) on GLUE MRPC,
tokenizer(sentence1, sentence2, truncation=True), DataCollatorWithPadding, the Trainer's
defaults (AdamW lr 5e-5, weight decay 0, linear decay without warm-up, max_grad_norm 1.0),
batch 8, 3 epochs, evaluation each epoch.

Usage: mrpc_trainer.py CHECKPOINT_DIR GLUE_MRPC_DIR SEED THREADS
Prints one JSON line: per-epoch validation accuracy/F1/loss, steps, wall seconds.
"""
import json, sys, tempfile, time

import numpy as np
import pyarrow.parquet as pq
import torch
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                          Trainer, TrainingArguments, set_seed)

checkpoint, data, seed, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
set_seed(seed)
tokenizer = AutoTokenizer.from_pretrained(checkpoint)


def split(name):
    table = pq.read_table(f"{data}/{name}.parquet").to_pydict()
    encoded = tokenizer(table["sentence1"], table["sentence2"], truncation=True)
    return [dict({k: encoded[k][i] for k in encoded}, labels=table["label"][i]) for i in range(len(table["label"]))]


def metrics(prediction):
    predicted = np.argmax(prediction.predictions, -1)
    labels = prediction.label_ids
    tp = int(((predicted == 1) & (labels == 1)).sum())
    precision = tp / max(int((predicted == 1).sum()), 1)
    recall = tp / max(int((labels == 1).sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": float((predicted == labels).mean()), "f1": f1}


model = AutoModelForSequenceClassification.from_pretrained(checkpoint, num_labels=2)
args = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=8, num_train_epochs=3,
                         eval_strategy="epoch", save_strategy="no", logging_steps=50, seed=seed, use_cpu=True,
                         report_to="none", disable_tqdm=True, dataloader_num_workers=0)
trainer = Trainer(model=model, args=args, train_dataset=split("train"), eval_dataset=split("validation"),
                  data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=metrics)
start = time.time()
trainer.train()
torch.set_num_threads(threads)
epochs = [{"epoch": h["epoch"], "eval_accuracy": h["eval_accuracy"], "eval_f1": h["eval_f1"], "eval_loss": h["eval_loss"]}
          for h in trainer.state.log_history if "eval_accuracy" in h]
print(json.dumps({"side": "pytorch", "seed": seed, "threads": threads, "steps": trainer.state.global_step,
                  "seconds": time.time() - start, "epochs": epochs}))
