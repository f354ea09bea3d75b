"""The field's DKT baseline trained here, on the same splits a run uses: where GainAKT3Exp's prediction stands.

    python benchmarks/dkt_baseline.py                                  # assist2015 fold 0 from ../shared/data
    python benchmarks/dkt_baseline.py --synthetic 1000 20 7            # synthetic students (N, skills, seed)

DKT (Piech et al. 2015) in pyKT's form (pykt/models/dkt.py): one embedding per interaction token
c_t + C * r_t (2C x emb_size), one LSTM layer (emb_size -> emb_size), dropout, a linear layer to C logits; the
logit of the next step's skill is the prediction, trained with BCE on every valid step. Adam; after each epoch the
validation AUC decides early stopping (--patience epochs without a better one) and the best epoch's weights are
scored. Rows, batches and masks come from gainakt3exp.data, so valid, test and test_window (pyKT's window
evaluation: only the selectmask positions score) are the rows and steps `gakt-eval` scores for GainAKT3Exp.
Seeded (torch.manual_seed and the batch-order generator): the same command gives the same AUCs on one machine.
On a question-level data set a response is hidden while its answer continues, as for GainAKT3Exp, and `pykt`
holds pyKT's question-level metrics (late fusion over the question files' rows) beside the concept-level ones.
Prints one JSON line: `val_auc`, `test_auc`, `test_window_auc`, `pykt` (pyKT's names, `headline_auc` the one pyKT
reports as final), `best_epoch`, the AUC of every epoch, seconds.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import DEFAULT_DATA_ROOT, Bench, Timer, emit, machine_cores, run
from torch import nn

from gainakt3exp.data import sequences as data_mod
from gainakt3exp.data import synthetic
from gainakt3exp.data.registry import resolve_data_root
from gainakt3exp.metrics import stats


class DKT(nn.Module):
    """pyKT's DKT: interaction embedding, one LSTM layer, dropout, a linear layer to one logit per skill."""

    def __init__(self, num_c: int, emb_size: int, dropout: float, responses: int = 2):
        super().__init__()
        self.num_c = num_c
        # responses 3 on question-level data: a response is HIDDEN while its answer continues (sequences.make_batch)
        self.interaction_emb = nn.Embedding(responses * num_c, emb_size)
        self.lstm = nn.LSTM(emb_size, emb_size, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(emb_size, num_c)

    def forward(self, c: torch.Tensor, r: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Logit of r_{t+1} (B, L): the skill q_t = c_{t+1} read from the state after step t."""
        state, _ = self.lstm(self.interaction_emb(c + self.num_c * r))
        return self.out(self.dropout(state)).gather(-1, q.unsqueeze(-1)).squeeze(-1)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="assist2015", help="data set name (default: assist2015)")
    parser.add_argument("--data_root", default=DEFAULT_DATA_ROOT,
                        help=f"folder holding the data set's folder; relative = to the project (default: "
                             f"{DEFAULT_DATA_ROOT})")
    parser.add_argument("--synthetic", nargs=3, type=int, default=None, metavar=("STUDENTS", "SKILLS", "SEED"),
                        help="train on `gakt-data synth` students written to a tmp folder instead (synthetic, or "
                             "synthetic_many above 20 skills)")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--seq_len", type=int, default=200, help="the data files' window length (default: 200)")
    parser.add_argument("--emb_size", type=int, default=200, help="embedding and LSTM size (pyKT's default: 200)")
    parser.add_argument("--dropout", type=float, default=0.1, help="(pyKT's default: 0.1)")
    parser.add_argument("--learning_rate", type=float, default=0.001, help="(pyKT's default: 0.001)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=20, help="at most this many epochs")
    parser.add_argument("--patience", type=int, default=3, help="stop after this many epochs without a better "
                                                                "validation AUC")
    parser.add_argument("--seed", type=int, default=42, help="seed of the weights and the batch order")
    parser.add_argument("--threads", type=int, default=machine_cores())
    return parser.parse_args(argv)


def predict(model: DKT, seqs, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Labels, probabilities and (question rows) answer index of the scored steps of every row (score mask: all
    valid steps, or the file's selectmask)."""
    model.eval()
    ys, ps, answers = [], [], []
    with torch.no_grad():
        for batch in data_mod.iterate_batches(seqs, batch_size, shuffle=False, generator=None, device="cpu"):
            z = model(batch.c, batch.r, batch.q)
            ys.append(batch.y[batch.score].numpy())
            ps.append(torch.sigmoid(z[batch.score]).numpy())
            if seqs.qidxs is not None:  # targets are steps 1..L of the rows
                qidx = seqs.qidxs[batch.rows.numpy()][:, 1:1 + batch.score.shape[1]]
                answers.append(qidx[batch.score.numpy()])
    model.train()
    return np.concatenate(ys), np.concatenate(ps), np.concatenate(answers) if answers else None


def evaluate(model: DKT, seqs, batch_size: int) -> float:
    """AUC over the scored steps of every row."""
    y, p, _ = predict(model, seqs, batch_size)
    return stats.roc_auc(y, p)


def pykt_metrics(model: DKT, spec, splits: dict, batch_size: int) -> dict:
    """The metrics gakt-eval logs under pyKT's names (loops.evaluate.pykt_metrics), on the same rows."""
    out = {}
    for split, name in (("test", "test"), ("test_window", "window_test")):
        y, p, _ = predict(model, splits[split], batch_size)
        out[f"{name}auc"], out[f"{name}acc"] = stats.roc_auc(y, p), stats.accuracy(y, p)
    if not spec.num_q:
        return {**out, "headline_auc": out["window_testauc"]}
    for split, prefix in (("question", "ori"), ("question_window", "window")):
        y, p, answer = predict(model, data_mod.load_question_split(spec, split), batch_size)
        out.update({f"{prefix}{k}": v for k, v in stats.question_level_metrics(p, y, answer).items()})
    return {**out, "headline_auc": out["windowauclate_mean"]}


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="gakt-dkt-")) if args.synthetic else None
    try:
        if args.synthetic:
            students, skills, data_seed = args.synthetic
            dataset = "synthetic" if skills <= 20 else "synthetic_many"
            synthetic.generate_synthetic(tmp / dataset, students=students, skills=skills, seed=data_seed,
                                         maxlen=args.seq_len)
            root = tmp
        else:
            dataset = args.dataset
            root = resolve_data_root(args.data_root)
        spec = data_mod.dataset_spec(dataset, root)
        splits = {s: data_mod.load_split(spec, s, args.fold, args.seq_len)
                  for s in ("train", "valid", "test", "test_window")}
        torch.manual_seed(args.seed)
        generator = torch.Generator().manual_seed(args.seed)
        model = DKT(spec.num_c, args.emb_size, args.dropout, responses=3 if spec.num_q else 2)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
        history, best, best_state, stale = [], -1.0, None, 0
        with Timer() as train_t:
            for epoch in range(1, args.epochs + 1):
                for batch in data_mod.iterate_batches(splits["train"], args.batch_size, shuffle=True,
                                                      generator=generator, device="cpu"):
                    z = model(batch.c, batch.r, batch.q)
                    loss = nn.functional.binary_cross_entropy_with_logits(z[batch.mask], batch.y[batch.mask])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                val_auc = evaluate(model, splits["valid"], args.batch_size)
                history.append(val_auc)
                if val_auc > best:
                    best, best_epoch, stale = val_auc, epoch, 0
                    best_state = {k: v.clone() for k, v in model.state_dict().items()}
                else:
                    stale += 1
                    if stale >= args.patience:
                        break
        model.load_state_dict(best_state)
        results = {"val_auc": best, "best_epoch": best_epoch, "epochs_run": len(history),
                   "test_auc": evaluate(model, splits["test"], args.batch_size),
                   "test_window_auc": evaluate(model, splits["test_window"], args.batch_size),
                   "pykt": pykt_metrics(model, spec, splits, args.batch_size),
                   "val_auc_by_epoch": history, "train_seconds": train_t.wall,
                   "interactions_per_epoch": data_mod.num_interactions(splits["train"])}
        dkt = {k: getattr(args, k) for k in ("fold", "seq_len", "emb_size", "dropout", "learning_rate",
                                              "batch_size", "epochs", "patience", "seed")}
        emit("dkt_baseline", Bench(params={"model": "DKT", "dataset": dataset, **dkt}, overrides={},
                                   profiles=[], settings=vars(args)), results)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    run(main)
