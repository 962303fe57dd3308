#!/usr/bin/python3
"""Generate the reference fixtures the tpmpi C code is tested against.

An independent PyTorch implementation of the GPT-2 model of docs/MODEL.md,
written in the usual PyTorch form (nn.Linear weights are (out, in), q/k/v
are contiguous blocks of c_attn, projections are not transposed), computed in
float64.  Parameters and gradients are converted to tpmpi's storage layout
(head-grouped QKV rows, transposed output projections, padded wte) when they
are written; the C side must reproduce PyTorch's math through that layout.

Run (offline, deterministic):
    /usr/bin/python3 scripts/gen_fixtures.py --out tests/fixtures

The binary layout is documented in tests/fixtures/README.md and in
write_fixture() below.
"""

import argparse
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MAGIC = 20261127
VERSION = 1

# ---------------------------------------------------------------- config ----
L, C, NH = 2, 32, 4
HS = C // NH
V = 100
VP = ((V + 127) // 128) * 128
MAXT = 16
B, T = 2, 12
N_STEPS = 3
SEED = 1234

LR, BETA1, BETA2, EPS, WD, GRAD_CLIP = 1e-2, 0.9, 0.95, 1e-8, 0.1, 0.5

BLOCK_NAMES = ["ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
               "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb"]
EMB_NAMES = ["wte", "wpe", "lnfw", "lnfb"]
DECAYED = {"qkvw", "attprojw", "fcw", "fcprojw", "wte", "wpe"}


# ----------------------------------------------------------------- model ----
class CausalSelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_attn = nn.Linear(C, 3 * C)
        self.c_proj = nn.Linear(C, C)

    def forward(self, x):
        b, t, c = x.shape
        qkv = self.c_attn(x)                          # (b, t, 3C): [q | k | v]
        q, k, v = qkv.split(C, dim=2)
        q = q.view(b, t, NH, HS).transpose(1, 2)      # (b, nh, t, hs)
        k = k.view(b, t, NH, HS).transpose(1, 2)
        v = v.view(b, t, NH, HS).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(HS)
        mask = torch.tril(torch.ones(t, t, dtype=torch.bool, device=x.device))
        att = att.masked_fill(~mask, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = att @ v                                   # (b, nh, t, hs)
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_fc = nn.Linear(C, 4 * C)
        self.c_proj = nn.Linear(4 * C, C)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class LayerNorm(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n))

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = LayerNorm(C)
        self.attn = CausalSelfAttention()
        self.ln_2 = LayerNorm(C)
        self.mlp = MLP()

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(VP, C)      # rows V..VP-1 stay zero
        self.wpe = nn.Embedding(MAXT, C)
        self.h = nn.ModuleList([Block() for _ in range(L)])
        self.ln_f = LayerNorm(C)

    def forward(self, idx, targets=None):
        b, t = idx.shape
        pos = torch.arange(t, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)[None]
        for blk in self.h:
            x = blk(x)
        x = self.ln_f(x)
        logits = F.linear(x, self.wte.weight)         # tied head, (b, t, VP)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits[..., :V].reshape(-1, V),
                                   targets.reshape(-1), ignore_index=-1)
        return logits, loss


def init_params(model):
    """Deterministic init from torch.manual_seed(SEED), fixed draw order:
    per block (ln_1.w, ln_1.b, c_attn.w, c_attn.b, attn.c_proj.w, attn.c_proj.b,
    ln_2.w, ln_2.b, c_fc.w, c_fc.b, mlp.c_proj.w, mlp.c_proj.b), then
    wte[:V], wpe, ln_f.w, ln_f.b.  Draws are float32 then widened."""
    def n(shape, std):
        return torch.randn(*shape, dtype=torch.float32) * std

    with torch.no_grad():
        for blk in model.h:
            for ln, lin_pairs in ((blk.ln_1, [blk.attn.c_attn, blk.attn.c_proj]),
                                  (blk.ln_2, [blk.mlp.c_fc, blk.mlp.c_proj])):
                ln.weight.copy_(1.0 + n(ln.weight.shape, 0.1))
                ln.bias.copy_(n(ln.bias.shape, 0.05))
                for lin in lin_pairs:
                    lin.weight.copy_(n(lin.weight.shape, 0.1))
                    lin.bias.copy_(n(lin.bias.shape, 0.05))
        model.wte.weight.zero_()
        model.wte.weight[:V].copy_(n((V, C), 0.1))
        model.wpe.weight.copy_(n((MAXT, C), 0.1))
        model.ln_f.weight.copy_(1.0 + n((C,), 0.1))
        model.ln_f.bias.copy_(n((C,), 0.05))


# ------------------------------------------------- layout conversion ----
# Head-grouped QKV: our row h*3*hs + j*hs + d  <-  PyTorch row j*C + h*hs + d.
QKV_PERM = torch.tensor([j * C + h * HS + d
                         for h in range(NH) for j in range(3) for d in range(HS)])
QKV_INV = torch.argsort(QKV_PERM)
assert torch.equal(QKV_PERM[QKV_INV], torch.arange(3 * C))


def torch_tensors(model, grad=False):
    """The 12*L + 4 PyTorch tensors (or their .grad) in canonical order."""
    out = []
    for blk in model.h:
        out += [blk.ln_1.weight, blk.ln_1.bias,
                blk.attn.c_attn.weight, blk.attn.c_attn.bias,
                blk.attn.c_proj.weight, blk.attn.c_proj.bias,
                blk.ln_2.weight, blk.ln_2.bias,
                blk.mlp.c_fc.weight, blk.mlp.c_fc.bias,
                blk.mlp.c_proj.weight, blk.mlp.c_proj.bias]
    out += [model.wte.weight, model.wpe.weight, model.ln_f.weight, model.ln_f.bias]
    if grad:
        out = [p.grad if p.grad is not None else torch.zeros_like(p) for p in out]
    return out


def canonical_names():
    return [f"h.{l}.{n}" for l in range(L) for n in BLOCK_NAMES] + EMB_NAMES


def to_ours(name, t):
    """PyTorch tensor -> our storage layout (same values, permuted)."""
    base = name.split(".")[-1]
    if base in ("qkvw", "qkvb"):
        return t[QKV_PERM].contiguous()
    if base in ("attprojw", "fcprojw"):
        return t.t().contiguous()            # (out,in) -> [in, out]
    return t.contiguous()


def from_ours(name, t):
    base = name.split(".")[-1]
    if base in ("qkvw", "qkvb"):
        return t[QKV_INV].contiguous()
    if base in ("attprojw", "fcprojw"):
        return t.t().contiguous()
    return t.contiguous()


def our_shapes():
    shp = {"ln1w": (C,), "ln1b": (C,), "qkvw": (3 * C, C), "qkvb": (3 * C,),
           "attprojw": (C, C), "attprojb": (C,), "ln2w": (C,), "ln2b": (C,),
           "fcw": (4 * C, C), "fcb": (4 * C,), "fcprojw": (4 * C, C),
           "fcprojb": (C,), "wte": (VP, C), "wpe": (MAXT, C), "lnfw": (C,),
           "lnfb": (C,)}
    return [(n, shp[n.split(".")[-1]]) for n in canonical_names()]


def flatten_ours(model, grad=False):
    parts = []
    for (name, shape), t in zip(our_shapes(), torch_tensors(model, grad)):
        o = to_ours(name, t.detach())
        assert tuple(o.shape) == shape, (name, o.shape, shape)
        parts.append(o.reshape(-1))
    return torch.cat(parts)


def load_ours(model, flat):
    """Write a flat vector in our layout into the PyTorch model."""
    off = 0
    with torch.no_grad():
        for (name, shape), p in zip(our_shapes(), torch_tensors(model)):
            n = int(np.prod(shape))
            p.copy_(from_ours(name, flat[off:off + n].view(shape)).to(p.dtype))
            off += n
    assert off == flat.numel()


def offsets():
    off, res = 0, {}
    for name, shape in our_shapes():
        n = int(np.prod(shape))
        res[name] = (off, n, shape)
        off += n
    return res, off


# ---------------------------------------------------------------- main ----
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures")
    args = ap.parse_args()

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)

    model = GPT()
    init_params(model)                          # float32 draws
    x = torch.randint(0, V, (B, T), dtype=torch.int64)
    y = torch.randint(0, V, (B, T), dtype=torch.int64)
    y[0, 0] = -1
    model = model.double()

    offs, P = offsets()
    assert P == L * (12 * C * C + 13 * C) + VP * C + MAXT * C + 2 * C
    names = canonical_names()
    decay_mask = torch.zeros(P, dtype=torch.bool)
    for name in names:
        if name.split(".")[-1] in DECAYED:
            o, n, _ = offs[name]
            decay_mask[o:o + n] = True

    # ---- one forward + backward at the initial parameters
    params0 = flatten_ours(model)
    assert torch.all(params0[offs["wte"][0] + V * C: offs["wte"][0] + VP * C] == 0)
    model.zero_grad(set_to_none=True)
    logits, loss = model(x, y)
    loss.backward()
    grads0 = flatten_ours(model, grad=True)
    logits0 = logits.detach().clone()
    loss0 = loss.item()
    assert torch.all(logits0[..., V:] == 0)
    wo = offs["wte"][0]
    assert torch.all(grads0[wo + V * C: wo + VP * C] == 0)

    # ---- check: round-trip our float32 layout and recompute in float32
    m32 = GPT()
    load_ours(m32, params0.float())
    with torch.no_grad():
        lg32, l32 = m32(x, y)
    rt = flatten_ours(m32)
    m32.zero_grad(set_to_none=True)
    m32(x, y)[1].backward()
    g32 = flatten_ours(m32, grad=True)
    dg32 = (g32.double() - grads0).abs().max().item()
    dl32 = (lg32.double() - logits0).abs().max().item()
    assert torch.equal(rt, params0.float()), "layout round trip not exact"
    assert abs(l32.item() - loss0) < 1e-5 * max(1.0, abs(loss0)), (l32.item(), loss0)
    assert torch.allclose(lg32.double(), logits0, atol=1e-5, rtol=1e-5)

    # ---- check: independent recomputation of the forward in OUR layout
    # (plain tensor math following docs/MODEL.md, no nn modules)
    def forward_ours(flat):
        def get(name):
            o, n, shape = offs[name]
            return flat[o:o + n].view(shape)

        def ln(v, w, b):
            mu = v.mean(-1, keepdim=True)
            var = ((v - mu) ** 2).mean(-1, keepdim=True)
            return (v - mu) / torch.sqrt(var + 1e-5) * w + b

        h = get("wte")[x] + get("wpe")[:T][None]
        causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
        for l in range(L):
            p = lambda n: get(f"h.{l}.{n}")
            a = ln(h, p("ln1w"), p("ln1b"))
            qkv = a @ p("qkvw").t() + p("qkvb")              # head-grouped
            qkv = qkv.view(B, T, NH, 3, HS)
            q, k, v = qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]
            s = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(HS)
            s = s.masked_fill(~causal, float("-inf")).softmax(-1)
            yy = torch.einsum("bhts,bshd->bthd", s, v).reshape(B, T, C)
            h = h + yy @ p("attprojw") + p("attprojb")
            m = ln(h, p("ln2w"), p("ln2b"))
            u = m @ p("fcw").t() + p("fcb")
            g = 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))
            h = h + g @ p("fcprojw") + p("fcprojb")
        h = ln(h, get("lnfw"), get("lnfb"))
        lg = h @ get("wte").t()
        lsm = lg[..., :V].log_softmax(-1)
        valid = y >= 0
        nll = -lsm.gather(-1, y.clamp(min=0)[..., None])[..., 0]
        return lg, nll[valid].mean()

    lg_o, loss_o = forward_ours(params0)
    assert torch.allclose(lg_o, logits0, atol=1e-12, rtol=1e-10)
    assert abs(loss_o.item() - loss0) < 1e-12

    # ---- check: finite differences (float64) on one entry of every tensor kind
    def loss_at(flat):
        load_ours(model, flat)
        with torch.no_grad():
            return model(x, y)[1].item()

    gen = torch.Generator().manual_seed(99)
    fd_max_rel = 0.0
    h_fd = 1e-6
    probe = []
    kinds = [f"h.0.{n}" for n in BLOCK_NAMES] + [f"h.1.{n}" for n in ("qkvw", "fcprojw")] + EMB_NAMES
    for name in kinds:
        o, n, shape = offs[name]
        if name == "wte":
            idx = int(x[0, 3]) * C + 5              # a used token row (embedding + head)
        elif name == "wpe":
            idx = 7 * C + 2                         # a used position
        elif name.endswith("qkvb"):
            idx = 1 * 3 * HS + 2 * HS + 3           # head 1, v, d=3 (k-bias grads are 0)
        else:
            idx = int(torch.randint(0, n, (1,), generator=gen))
        probe.append((name, o + idx))
    probe.append(("wte(padded row)", wo + (V + 3) * C + 1))
    used = set(x.reshape(-1).tolist())
    unused = next(r for r in range(V) if r not in used)
    probe.append(("wte(row not in input)", wo + unused * C + 4))   # head only
    for label, gi in probe:
        fp = params0.clone(); fp[gi] += h_fd
        fm = params0.clone(); fm[gi] -= h_fd
        fd = (loss_at(fp) - loss_at(fm)) / (2 * h_fd)
        an = grads0[gi].item()
        err = abs(fd - an)
        rel = err / max(abs(an), 1e-6)
        print(f"  fd {label:26s} idx {gi:6d}  analytic {an:+.10e}  fd {fd:+.10e}  err {err:.2e}")
        assert err < 1e-7 + 1e-5 * abs(an), (label, an, fd)
        fd_max_rel = max(fd_max_rel, rel)
    load_ours(model, params0)

    # ---- 3 AdamW steps on the same batch, hand-written per MODEL.md
    def train(mdl, flat):
        dt = flat.dtype
        m_st = torch.zeros(P, dtype=dt)
        v_st = torch.zeros(P, dtype=dt)
        wd = torch.where(decay_mask, torch.tensor(WD, dtype=dt), torch.tensor(0.0, dtype=dt))
        losses, gnorms = [], []
        for t in range(1, N_STEPS + 1):
            load_ours(mdl, flat)
            mdl.zero_grad(set_to_none=True)
            _, loss = mdl(x, y)
            loss.backward()
            g = flatten_ours(mdl, grad=True)
            if t == 1 and dt == torch.float64:
                assert torch.equal(g, grads0) and loss.item() == loss0
            norm = torch.sqrt((g * g).sum()).item()
            scale = min(1.0, GRAD_CLIP / norm)
            g = g * scale
            m_st = BETA1 * m_st + (1 - BETA1) * g
            v_st = BETA2 * v_st + (1 - BETA2) * g * g
            mhat = m_st / (1 - BETA1 ** t)
            vhat = v_st / (1 - BETA2 ** t)
            flat = flat - LR * (mhat / (torch.sqrt(vhat) + EPS) + wd * flat)
            losses.append(loss.item())
            gnorms.append(norm)
        return flat, losses, gnorms

    params_after, step_losses, norms = train(model, params0.clone())
    # The same 3 steps in float32 (what the C code does), to size tolerances.
    # k-bias entries (qkvb rows h*3*hs + hs + d) have a mathematically zero
    # gradient; in fp32 it is rounding noise that Adam amplifies, so they are
    # reported separately.
    kb_mask = torch.zeros(P, dtype=torch.bool)
    for l in range(L):
        o = offs[f"h.{l}.qkvb"][0]
        for h in range(NH):
            kb_mask[o + h * 3 * HS + HS: o + h * 3 * HS + 2 * HS] = True
    assert torch.all(grads0[kb_mask].abs() < 1e-14)
    pa32, sl32, gn32 = train(m32, params0.float().clone())
    d32 = (pa32.double() - params_after).abs()
    d32_main = d32[~kb_mask].max().item()
    d32_kb = d32[kb_mask].max().item()
    assert d32_main < 1e-4, d32_main
    assert all(step_losses[i + 1] < step_losses[i] for i in range(N_STEPS - 1)), step_losses
    assert torch.all(params_after[wo + V * C: wo + VP * C] == 0)
    assert norms[0] > GRAD_CLIP, "clipping should be active at step 1"
    load_ours(model, params_after)
    with torch.no_grad():
        loss_after = model(x, y)[1].item()

    # ---- write
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "gpt_tiny.bin")
    header = np.array([MAGIC, VERSION, L, C, NH, V, VP, MAXT, B, T, P, N_STEPS,
                       0, 0, 0, 0], dtype="<i4")
    hyper = np.array([LR, BETA1, BETA2, EPS, WD, GRAD_CLIP, 0, 0], dtype="<f4")
    f32 = lambda a: np.ascontiguousarray(a.detach().cpu().numpy().reshape(-1), dtype="<f4")
    chunks = [header, hyper,
              x.numpy().reshape(-1).astype("<i4"), y.numpy().reshape(-1).astype("<i4"),
              f32(logits0), np.array([loss0], dtype="<f4"),
              f32(params0), f32(grads0),
              np.array(step_losses, dtype="<f4"), np.array([norms[0]], dtype="<f4"),
              f32(params_after)]
    with open(path, "wb") as fh:
        for c in chunks:
            fh.write(c.tobytes())
    expect = 4 * (16 + 8 + 2 * B * T + B * T * VP + 1 + 3 * P + N_STEPS + 1)
    size = os.path.getsize(path)
    assert size == expect, (size, expect)

    # ---- read back and verify
    raw = open(path, "rb").read()
    hdr = np.frombuffer(raw, "<i4", 16, 0)
    assert hdr[0] == MAGIC and hdr[10] == P
    off = 4 * 24
    xr = np.frombuffer(raw, "<i4", B * T, off); off += 4 * B * T
    yr = np.frombuffer(raw, "<i4", B * T, off); off += 4 * B * T
    off += 4 * (B * T * VP + 1)
    pr = np.frombuffer(raw, "<f4", P, off); off += 4 * P
    off += 4 * P + 4 * (N_STEPS + 1)
    pa = np.frombuffer(raw, "<f4", P, off); off += 4 * P
    assert off == size
    assert np.array_equal(xr, x.numpy().reshape(-1)) and yr[0] == -1
    assert np.array_equal(pr, f32(params0)) and np.array_equal(pa, f32(params_after))

    # ---- summary
    n_valid = int((y >= 0).sum())
    print(f"torch {torch.__version__}, numpy {np.__version__}")
    print(f"config L={L} C={C} NH={NH} hs={HS} V={V} Vp={VP} maxT={MAXT} B={B} T={T}")
    print(f"P = {P} floats; file {path}: {size} bytes")
    print(f"valid targets {n_valid}/{B * T}; loss {loss0:.9f} (fp32 round-trip {l32.item():.9f})")
    print(f"grad norm step1 {norms[0]:.9f} (clip {GRAD_CLIP}, scale {min(1, GRAD_CLIP / norms[0]):.6f})")
    print(f"grad norms per step {[f'{n:.6f}' for n in norms]}")
    print(f"step losses {[f'{l:.9f}' for l in step_losses]}; loss after 3 updates {loss_after:.9f}")
    live = (grads0 != 0) & ~kb_mask
    ga = grads0[live].abs()
    print(f"k-bias entries {int(kb_mask.sum())} (grad ~0, max |g| {grads0[kb_mask].abs().max().item():.1e}); "
          f"other nonzero grads: min |g| {ga.min().item():.3e}, "
          f"{int((ga < 1e-6).sum())} below 1e-6, {int((ga < 1e-5).sum())} below 1e-5")
    print(f"fp32 rerun at params: max |logits diff| {dl32:.2e}, max |grad diff| {dg32:.2e}")
    print(f"fp32 rerun of the 3 steps: losses {[f'{l:.7f}' for l in sl32]}, "
          f"grad norm1 {gn32[0]:.7f}")
    print(f"  max |params_after fp32 - fp64|: {d32_main:.2e} (excluding k-bias), "
          f"{d32_kb:.2e} (k-bias entries)")
    print(f"max |params_after - params| {((params_after - params0).abs().max()).item():.6f}")
    print(f"finite-difference checks: {len(probe)} entries, max rel err {fd_max_rel:.2e}")
    print("all checks passed")


if __name__ == "__main__":
    sys.exit(main())
