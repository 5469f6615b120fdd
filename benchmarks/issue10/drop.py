"""Consistency term at step 0 in train mode: tiny BERT (dropout 0.1), tiny Llama (attention dropout 0.1), packaged MiniLM."""
import sys, torch, warnings, logging
warnings.filterwarnings("ignore"); logging.disable(logging.WARNING)
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))  # repo root: tests.core.tiny
from transformers import TrainingArguments, BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM, AutoModelForSequenceClassification
from balora import BALoRAConfig, BALoRATrainer, prepare_model
from tests.core.tiny import nlu_batch, nlg_batch
args = TrainingArguments(output_dir="/tmp/mtrain/out", report_to=[], use_cpu=True)
def term(model, batch, task="nlu"):
    cfg = BALoRAConfig(task=task, lambda_consistency=1.0, lambda_diversity=0, lambda_svd=0)
    pm = prepare_model(model, "ba-lora", r=4, balora=cfg).train()
    tr = BALoRATrainer(model=pm, args=args)
    torch.manual_seed(0)
    tr.compute_loss(pm, batch)
    v = tr._sums["consistency"]
    return float(v)
torch.manual_seed(0)
bert = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64, num_labels=3, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1))
print("tiny BERT dropout 0.1:", term(bert, nlu_batch()))
torch.manual_seed(0)
llama = LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, attention_dropout=0.1, tie_word_embeddings=False))
print("tiny Llama attention dropout 0.1 (fused):", term(llama, nlg_batch(), "nlg"))
from balora.data.assets import minilm_path
mini = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
g = torch.Generator().manual_seed(1)
batch = {"input_ids": torch.randint(1000, 5000, (16, 32), generator=g), "attention_mask": torch.ones(16, 32, dtype=torch.long), "labels": torch.randint(0, 2, (16,), generator=g)}
print("MiniLM as shipped:", term(mini, batch))
