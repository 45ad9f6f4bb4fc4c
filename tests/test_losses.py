"""Relation losses against values computed by hand (modeling/losses.py), and the batched
training loss (modeling/targets.py) against the per-document definition: per pair, summed over
labels; mean over a document's ordered pairs; mean over the documents that have pairs."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from glidre_core import GLiDRE, GLiDREConfig, parse_document
from glidre_core.modeling.batch import ordered_pairs
from glidre_core.modeling.losses import adaptive_threshold_loss, focal_loss, pair_losses, relation_loss
from glidre_core.modeling.targets import joint_loss, relation_target_arrays, training_batch

from conftest import tiny_config


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _focal(x: float, y: int, alpha: float, gamma: float) -> float:
    p = _sig(x)
    if y == 1:
        return -alpha * (1 - p) ** gamma * math.log(p)
    return -(1 - alpha) * p**gamma * math.log(1 - p)


LOGITS = [[2.0, -1.0, 0.0], [0.5, 3.0, -2.5]]
TARGETS = [[1, 0, 1], [0, 1, 0]]


def test_focal_loss_literal_values():
    x = torch.tensor([0.0, 0.0, math.log(3.0)])
    y = torch.tensor([1.0, 0.0, 1.0])
    got = focal_loss(x, y, alpha=0.25, gamma=2.0)
    # p = 0.5: 0.25 * 0.5^2 * ln 2 ; 0.75 * 0.5^2 * ln 2 ; p = 0.75: 0.25 * 0.25^2 * -ln 0.75
    expected = [0.25 * 0.25 * math.log(2), 0.75 * 0.25 * math.log(2), 0.25 * 0.0625 * -math.log(0.75)]
    assert got.tolist() == pytest.approx(expected, rel=1e-5)
    assert expected[0] == pytest.approx(0.0433216988, rel=1e-8)


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (0.8, 2.0), (0.8, 0.0), (0.5, 1.0)])
def test_focal_loss_elementwise(alpha, gamma):
    got = focal_loss(torch.tensor(LOGITS), torch.tensor(TARGETS, dtype=torch.float), alpha, gamma)
    for i, row in enumerate(LOGITS):
        for j, x in enumerate(row):
            assert float(got[i, j]) == pytest.approx(_focal(x, TARGETS[i][j], alpha, gamma), rel=1e-5)


def test_relation_loss_focal_sums_labels_and_averages_pairs():
    alpha, gamma = 0.25, 2.0
    got = relation_loss("focal", torch.tensor(LOGITS), torch.tensor(TARGETS), alpha=alpha, gamma=gamma)
    per_pair = [sum(_focal(x, y, alpha, gamma) for x, y in zip(r, t)) for r, t in zip(LOGITS, TARGETS)]
    assert float(got) == pytest.approx(sum(per_pair) / len(per_pair), rel=1e-5)


def test_relation_loss_gamma_is_gamma_not_alpha():
    """The reference code silently set gamma = alpha; here they must act independently."""
    logits, targets = torch.tensor(LOGITS), torch.tensor(TARGETS)
    a = relation_loss("focal", logits, targets, alpha=0.8, gamma=2.0)
    b = relation_loss("focal", logits, targets, alpha=0.8, gamma=0.8)
    assert float(a) != pytest.approx(float(b), rel=1e-3)


def test_focal_with_gamma_zero_is_weighted_bce():
    alpha = 0.8
    got = relation_loss("focal", torch.tensor(LOGITS), torch.tensor(TARGETS), alpha=alpha, gamma=0.0)
    per_pair = []
    for row, tgt in zip(LOGITS, TARGETS):
        s = 0.0
        for x, y in zip(row, tgt):
            p = _sig(x)
            s += -alpha * math.log(p) if y else -(1 - alpha) * math.log(1 - p)
        per_pair.append(s)
    assert float(got) == pytest.approx(sum(per_pair) / 2, rel=1e-5)


def test_bce_loss():
    got = relation_loss("bce", torch.tensor(LOGITS), torch.tensor(TARGETS))
    per_pair = [
        sum(-math.log(_sig(x)) if y else -math.log(1 - _sig(x)) for x, y in zip(r, t))
        for r, t in zip(LOGITS, TARGETS)
    ]
    assert float(got) == pytest.approx(sum(per_pair) / 2, rel=1e-5)
    # alpha/gamma do not change BCE
    again = relation_loss("bce", torch.tensor(LOGITS), torch.tensor(TARGETS), alpha=0.1, gamma=5.0)
    assert float(again) == pytest.approx(float(got), rel=1e-7)


def test_adaptive_threshold_hand_computed():
    logits = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
    th = torch.tensor([0.0, 1.0])
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    # pair 0: positives {label0} vs TH -> -log(e^1 / (e^0 + e^1)); TH vs negatives {label1}
    #         -> -log(e^0 / (e^0 + e^-1))
    pair0 = (math.log(1 + math.e) - 1) + math.log(1 + math.exp(-1))
    # pair 1: no positives -> part 1 is 0; TH (1.0) vs negatives (0.5, 2.0)
    pair1 = math.log(math.exp(1.0) + math.exp(0.5) + math.exp(2.0)) - 1.0
    per = adaptive_threshold_loss(logits, th, targets)
    assert per.tolist() == pytest.approx([pair0, pair1], rel=1e-5)
    got = relation_loss("adaptive_threshold", logits, targets, threshold_logits=th)
    assert float(got) == pytest.approx((pair0 + pair1) / 2, rel=1e-5)


def test_adaptive_threshold_needs_threshold_logits():
    with pytest.raises(ValueError, match="threshold"):
        relation_loss("adaptive_threshold", torch.tensor(LOGITS), torch.tensor(TARGETS))


def test_relation_loss_is_the_mean_of_pair_losses():
    for name, kw in [("focal", {"alpha": 0.3, "gamma": 1.5}), ("bce", {}),
                     ("adaptive_threshold", {"threshold_logits": torch.tensor([0.2, -0.4])})]:
        per = pair_losses(name, torch.tensor(LOGITS), torch.tensor(TARGETS), **kw)
        assert per.shape == (2,)
        got = relation_loss(name, torch.tensor(LOGITS), torch.tensor(TARGETS), **kw)
        assert float(got) == pytest.approx(float(per.mean()), rel=1e-6)
    # per pair = summed over labels
    per = pair_losses("focal", torch.tensor(LOGITS), torch.tensor(TARGETS), alpha=0.3, gamma=1.5)
    assert float(per[1]) == pytest.approx(sum(_focal(x, y, 0.3, 1.5) for x, y in zip(LOGITS[1], TARGETS[1])), rel=1e-5)


def test_empty_logits_give_zero_loss():
    loss = relation_loss("focal", torch.zeros((0, 3)), torch.zeros((0, 3)))
    assert float(loss) == 0.0


def test_unknown_loss_name_raises():
    with pytest.raises(ValueError, match="unknown loss 'foo'"):
        relation_loss("foo", torch.tensor(LOGITS), torch.tensor(TARGETS))


def test_unknown_loss_name_in_config_raises():
    with pytest.raises(ValidationError, match="foo"):
        GLiDREConfig(loss="foo")
    cfg = GLiDREConfig(loss="bce")
    with pytest.raises(ValidationError):
        cfg.loss = "focall"  # validate_assignment: no silent fallback later either


# -- the batched training loss --------------------------------------------------------------------

def _doc(doc_id: str, text: str, names: list[str], relations: list[tuple[int, str, int]]):
    ents = [{"id": str(i), "mentions": [{"start": text.index(n), "end": text.index(n) + len(n)}]}
            for i, n in enumerate(names)]
    rels = [{"head": str(h), "label": lab, "tail": str(t)} for h, lab, t in relations]
    return parse_document({"doc_id": doc_id, "text": text, "entities": ents, "relations": rels})


# documents with 3, 1 (no pairs), 2 and 4 entities; labels in dataset spellings
DOCS = [
    _doc("ada", "Ada Lovelace was born in London and worked with Charles Babbage .",
         ["Ada Lovelace", "London", "Charles Babbage"],
         [(0, "Place_of birth", 1), (0, "collaborator", 2), (2, "collaborator", 0)]),
    _doc("one", "Paris is large .", ["Paris"], []),
    _doc("two", "Bern lies in Switzerland .", ["Bern", "Switzerland"], [(0, "country", 1), (0, "unknown label", 1)]),
    _doc("four", "Anna Schmidt works for Siemens in Munich and lives near Augsburg .",
         ["Anna Schmidt", "Siemens", "Munich", "Augsburg"],
         [(1, "located in", 2), (0, "Place of birth", 3)]),
]
LABELS = ["place of birth", "collaborator", "country", "located in"]


def _model(**overrides) -> GLiDRE:
    torch.manual_seed(0)
    model = GLiDRE(tiny_config(**overrides))
    model.eval()  # the random encoder's own dropout would make batched and per-document runs differ
    return model


def _targets_by_hand(model: GLiDRE, doc, heads, tails) -> torch.Tensor:
    index = {e.id: i for i, e in enumerate(doc.entities)}
    gold = {(index[r.head], model.config.normalize_label(r.label), index[r.tail]) for r in doc.relations}
    return torch.tensor([[1.0 if (h, lab, t) in gold else 0.0 for lab in LABELS]
                         for h, t in zip(heads.tolist(), tails.tolist())]).reshape(len(heads), len(LABELS))


def test_relation_target_arrays_follow_the_batch_pair_order():
    model = _model()
    prepared = [model.prepare(d) for d in DOCS]
    arrays = relation_target_arrays(model.config, prepared, LABELS)
    counts = [len(d.entities) for d in DOCS]
    sizes = [n * (n - 1) for n in counts]
    assert sizes == [6, 0, 2, 12]
    assert arrays["relation_targets"].shape == (sum(sizes), len(LABELS))
    # 3 documents have pairs: each weighs 1/3, spread evenly over its pairs
    assert arrays["pair_weight"].tolist() == pytest.approx([1 / (k * 3) for k in sizes for _ in range(k)])
    assert float(arrays["pair_weight"].sum()) == pytest.approx(1.0)
    # a corpus weight (DataConfig.relation_weight) scales its documents' share, nothing else
    prepared[0].relation_weight = 0.25
    weighted = relation_target_arrays(model.config, prepared, LABELS)["pair_weight"]
    assert weighted[:6].tolist() == pytest.approx([0.25 / (6 * 3)] * 6)
    assert weighted[6:].tolist() == pytest.approx(arrays["pair_weight"][6:].tolist())
    prepared[0].relation_weight = 1.0
    start = 0
    for d, n, k in zip(DOCS, counts, sizes):
        heads, tails = ordered_pairs(n)
        block = torch.from_numpy(arrays["relation_targets"][start : start + k])
        torch.testing.assert_close(block, _targets_by_hand(model, d, heads, tails))
        start += k
    # the labels are normalised ("Place_of birth" -> "place of birth") and land on pair (0, 1)
    first = arrays["relation_targets"][:6]
    heads, tails = ordered_pairs(3)
    pair = list(zip(heads.tolist(), tails.tolist())).index((0, 1))
    assert first[pair].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert float(arrays["relation_targets"].sum()) == 6.0  # the unknown label is dropped


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_model_loss_is_the_per_document_mean_with_configured_alpha_and_gamma(weight):
    model = _model(focal_alpha=0.25, focal_gamma=2.0, relation_loss_weight=weight)
    prepared = [model.prepare(d) for d in DOCS]
    labels = model.encode_labels(LABELS)
    with torch.no_grad():
        batch = training_batch(model, prepared, LABELS, None)
        out = model(batch, labels)
        loss = joint_loss(model, batch, out)
        # the definition, from each document's logits computed alone
        per_doc = []
        for p, d in zip(prepared, DOCS):
            alone, _ = model.collate([p])
            logits = model(alone, labels).relation_logits
            heads, tails = alone.entities.heads[0], alone.entities.tails[0]
            if len(heads) == 0:
                assert logits.shape == (0, len(LABELS))
                continue
            targets = _targets_by_hand(model, d, heads, tails)
            total = sum(_focal(float(logits[i, r]), int(targets[i, r]), 0.25, 2.0)
                        for i in range(len(heads)) for r in range(len(LABELS)))
            per_doc.append(total / len(heads))
    assert len(per_doc) == 3
    assert out.relation_logits.shape == (20, len(LABELS))
    assert float(loss) == pytest.approx(weight * sum(per_doc) / len(per_doc), rel=1e-4)
    # alpha and gamma really reach the loss
    model.config.focal_gamma = 0.5
    with torch.no_grad():
        other = joint_loss(model, batch, out)
    assert float(other) != pytest.approx(float(loss), rel=1e-3)


def test_batch_without_pairs_gives_a_zero_loss_that_reaches_every_head():
    model = _model()
    model.train()
    prepared = [model.prepare(DOCS[1])]
    batch = training_batch(model, prepared, LABELS, None)
    assert batch.entities.num_pairs == 0
    loss = joint_loss(model, batch, model(batch, model.encode_labels(LABELS)))
    assert float(loss.detach()) == 0.0
    loss.backward()
    # a zero gradient, not a missing one (DDP waits for every parameter)
    for q in model.head_parameters():
        assert q.grad is not None and float(q.grad.abs().sum()) == 0.0


def test_adaptive_threshold_gradients_are_finite():
    logits = torch.tensor([[1.0, -1.0, 0.3], [0.5, 2.0, -0.2]], requires_grad=True)
    th = torch.tensor([0.0, 1.0], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    loss = relation_loss("adaptive_threshold", logits, targets, threshold_logits=th)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all() and torch.isfinite(th.grad).all()
    # raising a positive's logit lowers the loss, raising a negative's raises it
    assert float(logits.grad[0, 0]) < 0 < float(logits.grad[1, 1])


def test_model_with_adaptive_threshold_equals_per_document_loss_and_trains_finite():
    model = _model(loss="adaptive_threshold")
    prepared = [model.prepare(d) for d in DOCS]
    labels = model.encode_labels(LABELS)
    with torch.no_grad():
        batch = training_batch(model, prepared, LABELS, None)
        out = model(batch, labels)
        assert out.threshold_logits.shape == (out.relation_logits.shape[0],)
        loss = joint_loss(model, batch, out)
        per_doc = []
        for p, d in zip(prepared, DOCS):
            alone, _ = model.collate([p])
            res = model(alone, labels)
            if res.relation_logits.shape[0] == 0:
                continue
            targets = _targets_by_hand(model, d, alone.entities.heads[0], alone.entities.tails[0])
            per_doc.append(adaptive_threshold_loss(res.relation_logits, res.threshold_logits, targets).mean())
    assert float(loss) == pytest.approx(float(torch.stack(per_doc).mean()), rel=1e-4)

    model.train()
    batch = training_batch(model, prepared, LABELS, None)
    loss = joint_loss(model, batch, model(batch, model.encode_labels(LABELS)))
    loss.backward()
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    assert model.threshold_embedding.grad is not None
    assert torch.isfinite(model.threshold_embedding.grad).all()
    assert float(model.threshold_embedding.grad.abs().sum()) > 0


def test_pair_row_is_the_position_in_the_batch_pair_order():
    from glidre_core.modeling.targets import pair_row

    for n in (2, 3, 7, 31):
        heads, tails = ordered_pairs(n)
        assert pair_row(heads, tails).tolist() == list(range(n * (n - 1)))
