"""B4xGA1 vs B2xGA2 (SGD, 5 steps, tiny Llama / tiny BERT): max |loss diff| of the logged losses, max |weight diff|."""
import sys, torch, warnings, logging
warnings.filterwarnings("ignore"); logging.disable(logging.WARNING)
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))  # repo root: tests.core.tiny
from torch.utils.data import Dataset
from transformers import TrainingArguments
from balora import BALoRAConfig, BALoRATrainer, prepare_model
from tests.core.tiny import tiny_llama, tiny_bert

class DS(Dataset):
    def __init__(s, rows): s.rows = rows
    def __len__(s): return len(s.rows)
    def __getitem__(s, i): return s.rows[i]

def nlg_rows(n=20, t=12, vocab=96):
    g = torch.Generator().manual_seed(3); rows = []
    for i in range(n):
        ids = torch.randint(1, vocab, (t,), generator=g); lab = ids.clone()
        lab[: (t - 2) if (i // 2) % 2 == 0 else 1] = -100  # ragged: 1 or 10 trained tokens, pairs
        rows.append({"input_ids": ids, "attention_mask": torch.ones(t, dtype=torch.long), "labels": lab})
    return rows

def nlu_rows(n=20, t=10):
    g = torch.Generator().manual_seed(3)
    return [{"input_ids": torch.randint(1, 64, (t,), generator=g), "attention_mask": torch.ones(t, dtype=torch.long),
             "labels": torch.randint(0, 3, (), generator=g)} for _ in range(n)]

def run(task, method, bs, ga, lam0=True, fused=True):
    if task == "nlg":
        m, rows = tiny_llama(), nlg_rows()
        cfg = BALoRAConfig(task="nlg", lambda_consistency=0, lambda_diversity=0, lambda_svd=0, fused_nlg=fused) if lam0 else BALoRAConfig(task="nlg", fused_nlg=fused)
    else:
        m, rows = tiny_bert(), nlu_rows()
        cfg = BALoRAConfig(lambda_consistency=0, lambda_diversity=0, lambda_svd=0) if lam0 else BALoRAConfig()
    pm = prepare_model(m, method, r=4, balora=cfg if "+reg" in method or method == "ba-lora" else None)
    args = TrainingArguments(output_dir="/tmp/mtrain/out", per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
                             learning_rate=0.5, optim="sgd", max_steps=5, logging_steps=1, report_to=[], use_cpu=True,
                             save_strategy="no", seed=0, disable_tqdm=True, lr_scheduler_type="constant", max_grad_norm=0,
                             dataloader_drop_last=False)
    tr = BALoRATrainer(model=pm, args=args, train_dataset=DS(rows))
    # no shuffling, so both splits see the same examples in each step
    tr._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(tr.train_dataset)
    tr.train()
    losses = [h["loss"] for h in tr.state.log_history if "loss" in h]
    w = torch.cat([p.detach().flatten() for n, p in pm.named_parameters() if p.requires_grad])
    w0 = None
    return losses, w

CASES = [("nlg", "ba-lora", True), ("nlg", "pissa", True), ("nlu", "pissa", True), ("nlu", "lora", True), ("nlu", "ba-lora", True)] if len(sys.argv) < 2 else [(a.split(":")[0], a.split(":")[1], a.split(":")[2] == "0") for a in sys.argv[1:]]
for task, method, lam0 in CASES:
    a = run(task, method, 4, 1, lam0); b = run(task, method, 2, 2, lam0)
    dl = max(abs(x - y) for x, y in zip(a[0], b[0]))
    print(f"{task} {method} lambdas0={lam0}: max|loss diff| {dl:.4g}  max|weight diff| {(a[1]-b[1]).abs().max():.4g}  "
          f"losses B4xGA1 {[round(x,4) for x in a[0]]} B2xGA2 {[round(x,4) for x in b[0]]}")
