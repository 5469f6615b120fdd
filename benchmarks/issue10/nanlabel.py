"""PiSSA / BA-LoRA through BALoRATrainer with one NaN regression label (row 5), batch 4, 3 steps."""
import sys, torch, warnings, logging
warnings.filterwarnings("ignore"); logging.disable(logging.WARNING)
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))  # repo root: tests.core.tiny
from transformers import TrainingArguments
from transformers.trainer_callback import PrinterCallback
from balora import BALoRATrainer, prepare_model
from tests.core.tiny import tiny_bert, nlu_batch
class Rows(torch.utils.data.Dataset):
    def __init__(s, b): s.r = [{k: v[i] for k, v in b.items()} for i in range(8)]
    def __len__(s): return 8
    def __getitem__(s, i): return s.r[i]
for method in ("pissa", "ba-lora"):
    b = nlu_batch(n=8, num_labels=1); b["labels"][5] = float("nan"); b["balora_index"] = torch.arange(8)
    m = prepare_model(tiny_bert(num_labels=1), method, r=4)
    args = TrainingArguments(output_dir="/tmp/mtrain/out", per_device_train_batch_size=4, learning_rate=1e-2, max_steps=3,
                             logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
    t = BALoRATrainer(model=m, args=args, train_dataset=Rows(b)); t.remove_callback(PrinterCallback)
    try:
        t.train(); err = "none (exit normally)"
    except Exception as e:
        err = f"{type(e).__name__}: {e}"
    nan = sum(int(torch.isnan(p).sum()) for p in m.parameters() if p.requires_grad)
    print(method, "| logged loss:", [h.get("loss") for h in t.state.log_history if "loss" in h], "| NaN trainable weights:", nan, "| error:", err[:230])
