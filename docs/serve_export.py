"""Top-K for one user from a recbole_cmi export, with torch, numpy and faiss only (no RecBole, no recbole_cmi).

python -m recbole_cmi.export --checkpoint saved/CMI-<time>.pth --out export/
python docs/serve_export.py export/ <user id> [K]      # prints what python -m recbole_cmi.recommend prints
"""

import json
import sys
from pathlib import Path

import faiss
import numpy as np
import torch

folder, user, k = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 20
manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
rows = [line.split("\t") for line in (folder / "items.tsv").read_text(encoding="utf-8").splitlines()[1:]]
token_of, index_of = {int(i): t for i, t in rows}, {t: int(i) for i, t in rows}
lines = (folder / "user_histories.tsv").read_text(encoding="utf-8").splitlines()[1:]
history = [index_of[t] for t in dict(line.split("\t") for line in lines)[user].split()]  # oldest first

recent = history[-manifest["history_length"] :]  # the model's input; every known item is excluded
padded = torch.zeros(1, manifest["history_length"], dtype=torch.long)
padded[0, : len(recent)] = torch.tensor(recent)
with torch.no_grad():
    interests = torch.jit.load(str(folder / "user_encoder.pt"))(padded)[0].numpy()  # [m, d]

index = faiss.read_index(str(folder / "items.faiss"))  # index id r = item index r + 1
_, found = index.search(np.ascontiguousarray(interests, dtype=np.float32), min(k + len(set(history)), index.ntotal))
candidates = np.array(sorted({int(r) + 1 for r in found.ravel() if r >= 0} - set(history)), dtype=np.int64)
per_interest = interests @ np.load(folder / "item_vectors.npy")[candidates].T  # [m, candidates]: exact scores
best = per_interest.max(axis=0)
print("rank\titem\tscore\tinterest")
for rank, j in enumerate(np.argsort(-best, kind="stable")[:k], start=1):
    print(f"{rank}\t{token_of[candidates[j]]}\t{best[j]:.4f}\t{per_interest[:, j].argmax()}")
