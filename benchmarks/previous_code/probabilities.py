"""Compare relation probabilities of the batched core with the landed code (saved by /tmp/base)."""
import os, sys, json, pickle
os.environ["HF_HUB_OFFLINE"]="1"; os.environ["TRANSFORMERS_OFFLINE"]="1"
DATA = os.environ.get("GLIDRE_DATA", str(__import__("pathlib").Path(__file__).resolve().parents[3] / "shared" / "data"))
import torch
torch.set_num_threads(2)
from glidre_core.modeling import GLiDRE
from glidre_core.readers import read_documents, load_rel_info
docs = read_documents(DATA + "/redocred/test_revised.json", "docred")[:int(sys.argv[2])]
m = GLiDRE.from_pretrained("default")
m.config.head_precision = "float32"
if len(sys.argv) > 4: m.scorer.chunk_size = int(sys.argv[4])
labels = sorted(set(load_rel_info().values()))
emb = m.encode_labels(labels)
out = {}
torch.set_grad_enabled(False)
if sys.argv[1] == "old":
    preps = [m.prepare(d) for d in docs]
    for i in range(0, len(preps), 4):
        b = preps[i:i+4]
        for p, sc in zip(b, m.score_documents(b, emb)):
            pr = sc.probabilities()
            for k,(h,t) in enumerate(zip(sc.heads.tolist(), sc.tails.tolist())):
                out[(p.doc.doc_id,h,t)] = pr[k].numpy()
    pickle.dump(out, open("/tmp/glidre_old_probs.pkl","wb"))
else:
    pred = m.predictor(relation_labels=emb, batch_size=int(sys.argv[3]) if len(sys.argv)>3 else 8)
    for sc in pred.score_relations(docs):
        for k,(h,t) in enumerate(zip(sc.heads.tolist(), sc.tails.tolist())):
            out[(sc.prepared.doc.doc_id,h,t)] = sc.probs[k]
    old = pickle.load(open("/tmp/glidre_old_probs.pkl","rb"))
    assert set(old)==set(out), (len(old), len(out))
    import numpy as np
    d = max(float(np.abs(old[k]-out[k]).max()) for k in old)
    print("pairs", len(old), "max abs diff", d)
