import os, sys, time, json
os.environ["HF_HUB_OFFLINE"]="1"; os.environ["TRANSFORMERS_OFFLINE"]="1"
DATA = os.environ.get("GLIDRE_DATA", str(__import__("pathlib").Path(__file__).resolve().parents[3] / "shared" / "data"))
import torch
torch.set_num_threads(2)
from glidre_core.modeling import GLiDRE
from glidre_core.readers import read_documents, load_rel_info
docs = read_documents(DATA + "/redocred/test_revised.json", "docred")[:64]
m = GLiDRE.from_pretrained("default")
if sys.argv[2] == "fp32": m.config.head_precision = "float32"
emb = m.encode_labels(sorted(set(load_rel_info().values())))
bs = int(sys.argv[3])
m.predict_documents(docs[:8], emb, batch_size=bs)
t = time.perf_counter(); m.predict_documents(docs, emb, batch_size=bs); dt = time.perf_counter() - t
print(json.dumps({"code": sys.argv[1], "heads": sys.argv[2], "batch": bs, "docs_per_s": round(64/dt, 2)}))
