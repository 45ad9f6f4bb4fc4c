"""Count aten ops and host-sync ops per document of predict_documents (baseline probe)."""
import os, sys, json, collections
os.environ["HF_HUB_OFFLINE"]="1"; os.environ["TRANSFORMERS_OFFLINE"]="1"
DATA = os.environ.get("GLIDRE_DATA", str(__import__("pathlib").Path(__file__).resolve().parents[3] / "shared" / "data"))
import torch
torch.set_num_threads(2)
from glidre_core.modeling import GLiDRE
from glidre_core.readers import read_documents, load_rel_info
docs = read_documents(DATA + "/redocred/test_revised.json", "docred")[:int(sys.argv[1]) if len(sys.argv)>1 else 16]
m = GLiDRE.from_pretrained("default")
labels = sorted(set(load_rel_info().values()))
emb = m.encode_labels(labels)
m.predict_documents(docs[:8], emb, batch_size=8)
SYNC = {"aten::item","aten::_local_scalar_dense","aten::nonzero","aten::is_nonzero","aten::unique","aten::_unique","aten::_unique2","aten::unique_dim","aten::equal","aten::unique_consecutive"}
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    m.predict_documents(docs, emb, batch_size=8)
c = collections.Counter(e.name for e in prof.events())
aten = sum(v for k,v in c.items() if k.startswith("aten::"))
sync = {k:v for k,v in c.items() if k in SYNC}
print(json.dumps({"docs":len(docs),"aten_per_doc":aten/len(docs),"sync_per_doc":sum(sync.values())/len(docs),"sync":sync}))
