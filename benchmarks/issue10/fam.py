import torch, transformers as T, warnings, logging
warnings.filterwarnings("ignore")
common = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
fams = {"Llama": {}, "Mistral": {}, "Qwen2": {}, "Gemma": dict(head_dim=8), "Gemma2": dict(head_dim=8), "Granite": dict(logits_scaling=4.0), "Cohere": dict(logit_scale=0.25), "Phi3": dict(pad_token_id=0), "Olmo": {}, "GPT2": None}
for name, extra in fams.items():
    try:
        if name == "GPT2":
            cfg = T.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64)
        else:
            cfg = getattr(T, f"{name}Config")(**common, **extra)
        torch.manual_seed(0)
        m = getattr(T, f"{name}ForCausalLM" if name != "GPT2" else "GPT2LMHeadModel")(cfg)
        ids = torch.randint(1, 100, (2, 8))
        out = m(input_ids=ids, output_hidden_states=True, logits_to_keep=1)
        h = out.hidden_states[-1][:, -1]; W = m.get_output_embeddings()
        lin = torch.nn.functional.linear(h, W.weight, W.bias)
        print(name, type(W).__name__, "ratio", float((out.logits[:, -1] / lin).mean()), "softcap", getattr(cfg, "final_logit_softcapping", None), "tied", W.weight is m.get_input_embeddings().weight)
    except Exception as e:
        print(name, "ERR", type(e).__name__, str(e)[:200])
