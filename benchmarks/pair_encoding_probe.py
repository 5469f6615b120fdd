"""How much a frozen encoder knows about a GLUE sentence-pair task, by pair encoding (RTE).

Linear probes (scikit-learn logistic regression, C chosen by 3-fold cross-validation on the training set) on
frozen, mean-pooled features of the packaged all-MiniLM-L6-v2, scored on the dev set next to the majority rate:

* ``cross``    both sentences in one input ("[CLS] a [SEP] b [SEP]"), mean-pooled: what balora's classifier
               (``PooledClassifier``) and its LP-FT head warm-up see today
* ``siamese``  each sentence encoded alone (u, v; L2-normalised), features (u, v, |u - v|, u * v), the
               Sentence-BERT classification head (Reimers & Gurevych 2019)
* ``cosine``   the single feature cos(u, v)

Needs the GLUE folder of the shared data pack (not a user's machine); about 2-4 minutes on one CPU thread:

    python benchmarks/pair_encoding_probe.py --glue-dir ../shared/data/glue/glue_data --task rte
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def encode(model, tok, first: list[str], second: list[str] | None, max_length: int, batch: int = 64) -> np.ndarray:
    """Mean-pooled last hidden states, computed in length-sorted batches, returned in input order."""
    from balora.heads import pool

    lengths = [len(a) + (len(second[i]) if second else 0) for i, a in enumerate(first)]
    order = np.argsort(lengths)
    out = np.zeros((len(first), model.config.hidden_size), np.float32)
    for start in range(0, len(order), batch):
        idx = order[start:start + batch]
        a = [first[i] for i in idx]
        b = [second[i] for i in idx] if second else None
        enc = tok(a, b, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state
        out[idx] = pool(hidden, enc["attention_mask"], "mean").numpy()
    return out


def probe(x_train: np.ndarray, y_train: np.ndarray, x_dev: np.ndarray, y_dev: np.ndarray) -> tuple[float, float]:
    """(dev accuracy, chosen C) of a standardised logistic regression with C chosen by 3-fold CV."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=[1e-3, 1e-2, 1e-1, 1.0], cv=3, max_iter=3000))
    clf.fit(x_train, y_train)
    return float(clf.score(x_dev, y_dev)), float(clf[-1].C_[0])


def main() -> None:
    from transformers import AutoModel, AutoTokenizer

    from balora.data.assets import minilm_path
    from balora.data.glue import get_task, load_glue

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--glue-dir", required=True, help="GLUE folder (<dir>/<TASK>/{train,dev}.tsv)")
    ap.add_argument("--task", default="rte", help="a GLUE sentence-pair classification task (rte, mrpc, ...)")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    spec = get_task(args.task)
    if len(spec.text_columns) != 2:
        raise SystemExit(f"--task {args.task}: not a sentence-pair task")
    splits = load_glue(args.task, args.glue_dir)
    train, dev = splits["train"], splits[spec.validation_splits[0]]
    c1, c2 = spec.text_columns
    y_train, y_dev = np.asarray(train["label"]), np.asarray(dev["label"])
    majority = float(np.mean(y_dev == np.bincount(y_train).argmax()))

    path = minilm_path()
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    start = time.perf_counter()
    cross_tr = encode(model, tok, train[c1], train[c2], args.max_length)
    cross_dev = encode(model, tok, dev[c1], dev[c2], args.max_length)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)  # noqa: E731
    u_tr, v_tr = unit(encode(model, tok, train[c1], None, args.max_length)), unit(encode(model, tok, train[c2], None, args.max_length))
    u_dev, v_dev = unit(encode(model, tok, dev[c1], None, args.max_length)), unit(encode(model, tok, dev[c2], None, args.max_length))
    seconds = time.perf_counter() - start

    def siamese(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.hstack([u, v, np.abs(u - v), u * v])

    rows = [("cross", *probe(cross_tr, y_train, cross_dev, y_dev)),
            ("siamese", *probe(siamese(u_tr, v_tr), y_train, siamese(u_dev, v_dev), y_dev)),
            ("cosine", *probe((u_tr * v_tr).sum(1, keepdims=True), y_train, (u_dev * v_dev).sum(1, keepdims=True),
                              y_dev))]
    print(f"{args.task}: {len(train)} training / {len(dev)} dev pairs, frozen all-MiniLM-L6-v2, encoding "
          f"{seconds:.0f} s on {args.threads} thread(s)")
    print("| pair encoding | probe dev accuracy | majority | C |\n|---|---|---|---|")
    for name, acc, c in rows:
        print(f"| {name} | {100 * acc:.2f} | {100 * majority:.2f} | {c:g} |")


if __name__ == "__main__":
    main()
