"""The model as a variable–constraint graph, and a graded distance between two models.

Nodes: variables, constraints (identified by position: names are labels and may repeat), and one
node per quadratic term `c·a·b` (objective or row), linked to its owner and to a and b (one edge
of multiplicity 2 for a square). Linear coefficients are the weights of variable–constraint edges;
linear objective coefficients are attributes of the variables.

Canonical form (what "equal" means): a '>=' row is negated into '<='; every row is scaled by a
positive factor so that its largest |coefficient| (linear or quadratic) is 1 (scaling a row does
not change the feasible set); an '=' row may be negated, so its sign is fixed by rhs > 0, then by
the sum of its coefficients, and when both are 0 it is compared in both signs. Variables and the
objective are never rescaled (that would change what the optimum means); an integer variable's
bounds are rounded inwards (x in [-8.75, -1] is x in [-8, -1]). Numbers are compared
after rounding to 12 significant digits.

Distance: an edit cost under a node matching, divided by the cost of deleting one graph and
inserting the other, so it lies in [0, 1]. The matching comes from Weisfeiler–Lehman colours
refined on both graphs together (with individualization to break symmetric ties), matched from
the finest colours down to the initial labels; what is left is matched by an optimal assignment
(scipy's linear_sum_assignment) on attribute and degree costs. The design and its validation: docs/evaluation.md.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import networkx as nx
import numpy as np

from solver_ppo.evaluation.model import Model

_VTYPE = {"C": 0.0, "I": 1.0, "B": 2.0}


def _vtype_code(vtype: str, lb: float, ub: float, semi: bool = False) -> float:
    """An integer variable in [0, 1] is a binary: MPS has no binary type, so writers state one
    either way (a BV bound, or integer markers with an upper bound of 1). Semi-continuous (or
    semi-integer) variables get codes of their own."""
    if semi:
        return 3.0 + _VTYPE[vtype]
    return _VTYPE["B"] if vtype == "I" and lb == 0.0 and ub == 1.0 else _VTYPE[vtype]

def _bounds(vtype: str, lb: float, ub: float) -> tuple[float, float]:
    """An integer variable's bounds rounded inwards: x in [-8.75, -1] and x in [-8, -1] are the same
    integer variable (Gurobi's writer rounds them so)."""
    if vtype == "C":
        return lb, ub
    return (math.ceil(lb) if math.isfinite(lb) else lb), (math.floor(ub) if math.isfinite(ub) else ub)


_LE, _EQ, _EQ_EITHER = 0.0, 1.0, 2.0  # row kinds: '<=', '=' with a fixed sign, '=' that reads the same negated
_WORK_CAP = 4_000_000  # edge visits spent on individualization rounds before we stop breaking ties
_ASSIGN_CAP = 4_000_000  # largest dense assignment matrix (entries); beyond it, sort and zip


@dataclass
class _Canon:
    """One model in canonical form, as arrays."""

    var: np.ndarray  # (n, 4) vtype code, lb, ub, obj
    row: np.ndarray  # (m, 2) kind, rhs
    e_row: np.ndarray  # (E,) row index of each nonzero
    e_var: np.ndarray  # (E,) variable index
    e_val: np.ndarray  # (E,) canonical coefficient
    sense: str
    constant: float
    term: np.ndarray  # (T, 2) quadratic terms: owner is the objective (1.0) or a row (0.0), canonical coefficient
    t_row: np.ndarray  # (T,) owner row index, -1 for the objective
    q_term: np.ndarray  # (Q,) term of each term–variable edge
    q_var: np.ndarray  # (Q,) its variable
    q_mult: np.ndarray  # (Q,) 1 for each factor of a product, 2 for a square

    @property
    def n(self) -> int:
        return len(self.var)

    @property
    def m(self) -> int:
        return len(self.row)

    @property
    def t(self) -> int:
        return len(self.term)

    def digest(self) -> str:
        """Invariant under renaming and reordering: a fixed order of the two models for symmetry."""
        h = hashlib.sha256(f"{self.sense}{_r(np.array([self.constant]))[0]!r}".encode())
        for arr in (_sorted_rows(_r(self.var)), _sorted_rows(_r(self.row)), np.sort(_r(self.e_val)), _sorted_rows(_r(self.term)), np.sort(self.q_mult)):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()


def _r(x: np.ndarray) -> np.ndarray:
    """Round to 12 significant digits (inf and 0 kept)."""
    x = np.asarray(x, dtype=float)
    finite = np.isfinite(x) & (x != 0)
    out = x.copy()
    mag = np.floor(np.log10(np.abs(x[finite])))
    scale = 10.0 ** (11 - mag)
    out[finite] = np.round(x[finite] * scale) / scale
    return out


def _sorted_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])] if len(a) else a


def _canonical(model: Model) -> _Canon:
    index = {v.name: i for i, v in enumerate(model.variables)}

    def col(name: str, where: str) -> int:
        if name not in index:
            raise ValueError(f"{where} uses {name!r}, which is not a variable of the model")
        return index[name]

    bounds = [_bounds(v.vtype, v.lb, v.ub) for v in model.variables]
    var = np.array([[_vtype_code(v.vtype, lb, ub, v.semi), lb, ub, v.obj] for v, (lb, ub) in zip(model.variables, bounds)], dtype=float).reshape(-1, 4)
    rows, cols, vals = [], [], []
    t_row, t_a, t_b, t_val = [], [], [], []  # quadratic terms: owner row (-1: objective), factors, coefficient
    kind = np.zeros(model.n_cons)
    rhs = np.zeros(model.n_cons)
    for r, c in enumerate(model.constraints):
        for name, coef in c.coefs.items():
            if coef != 0.0:
                rows.append(r)
                cols.append(col(name, f"constraint {c.name!r}"))
                vals.append(coef)
        for (a, b), coef in c.quad.items():
            if coef != 0.0:
                t_row.append(r)
                t_a.append(col(a, f"constraint {c.name!r}"))
                t_b.append(col(b, f"constraint {c.name!r}"))
                t_val.append(coef)
        kind[r] = _EQ if c.sense == "=" else _LE
        rhs[r] = -c.rhs if c.sense == ">=" else c.rhs
    n_row_terms = len(t_val)
    for (a, b), coef in model.quad_obj.items():
        if coef != 0.0:
            t_row.append(-1)
            t_a.append(col(a, "the objective"))
            t_b.append(col(b, "the objective"))
            t_val.append(coef)
    e_row, e_var = np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64)
    t_row, t_val = np.array(t_row, dtype=np.int64), np.array(t_val, dtype=float)
    rt = t_row[:n_row_terms]  # owners of the row terms
    ge = np.array([c.sense == ">=" for c in model.constraints], dtype=bool)
    row_sign = np.where(ge, -1.0, 1.0)  # '>=' rows negated into '<='
    e_val = np.array(vals, dtype=float) * row_sign[e_row]
    q_val = t_val[:n_row_terms] * row_sign[rt]
    # scale each row so that its largest |coefficient| is 1 (rows without coefficients: |rhs| = 1)
    scale = np.zeros(model.n_cons)
    np.maximum.at(scale, e_row, np.abs(e_val))
    np.maximum.at(scale, rt, np.abs(q_val))
    empty = scale == 0
    scale[empty] = np.where(rhs[empty] != 0, np.abs(rhs[empty]), 1.0)
    e_val = e_val / scale[e_row]
    q_val = q_val / scale[rt]
    rhs = rhs / scale
    # fix the sign of '=' rows: rhs > 0, else coefficient sum > 0, else sorted values >= their negation
    eq = np.flatnonzero(kind == _EQ)
    if len(eq):
        total = np.bincount(e_row, weights=e_val, minlength=model.n_cons) + np.bincount(rt, weights=q_val, minlength=model.n_cons)
        r_rhs, r_sum = _r(rhs), _r(total)
        sign = np.where(r_rhs[eq] != 0, np.sign(r_rhs[eq]), np.sign(r_sum[eq]))
        for k in np.flatnonzero(sign == 0):
            vals_k = np.sort(_r(np.concatenate([e_val[e_row == eq[k]], q_val[rt == eq[k]]])))
            neg = np.sort(-vals_k)
            diff = np.flatnonzero(vals_k != neg)
            if len(diff):
                sign[k] = 1.0 if vals_k[diff[0]] > neg[diff[0]] else -1.0
            else:
                kind[eq[k]] = _EQ_EITHER  # reads the same negated: compared in both signs
                sign[k] = 1.0
        flip = np.ones(model.n_cons)
        flip[eq] = sign
        e_val = e_val * flip[e_row]
        q_val = q_val * flip[rt]
        rhs = rhs * flip
    row = np.stack([kind, rhs], axis=1) if model.n_cons else np.zeros((0, 2))
    t_val = np.concatenate([q_val, t_val[n_row_terms:]])
    term = np.stack([(t_row < 0).astype(float), t_val], axis=1) if len(t_val) else np.zeros((0, 2))
    # term–variable edges: one per factor of a product, one of multiplicity 2 for a square
    t_a, t_b = np.array(t_a, dtype=np.int64), np.array(t_b, dtype=np.int64)
    ids = np.arange(len(t_val), dtype=np.int64)
    square = t_a == t_b
    q_term = np.concatenate([ids, ids[~square]])
    q_var = np.concatenate([t_a, t_b[~square]])
    q_mult = np.concatenate([np.where(square, 2.0, 1.0), np.ones(int((~square).sum()))])
    return _Canon(var, row, e_row, e_var, e_val, model.sense, float(model.obj_constant), term, t_row, q_term, q_var, q_mult)


def _delta(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Relative difference in [0, 1]: 0 iff equal (after rounding), 1 for opposite signs or inf vs finite."""
    x, y = _r(x), _r(y)
    out = np.ones(np.broadcast(x, y).shape)
    same = x == y
    both = np.isfinite(x) & np.isfinite(y) & ~same
    with np.errstate(invalid="ignore"):  # inf - inf in the entries masked out
        out[both] = np.abs(x - y)[both] / (np.abs(x) + np.abs(y))[both]
    out[same] = 0.0
    return out


def _var_cost(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(…, 4) x (…, 4) -> (…) in [0, 1]: type, lower bound, upper bound, objective coefficient."""
    return ((a[..., 0] != b[..., 0]) + _delta(a[..., 1], b[..., 1]) + _delta(a[..., 2], b[..., 2]) + _delta(a[..., 3], b[..., 3])) / 4.0


def _row_cost(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(…, 2) x (…, 2) -> (…) in [0, 1]: sense ('<=' vs '='), rhs."""
    return (((a[..., 0] == _LE) != (b[..., 0] == _LE)) + _delta(a[..., 1], b[..., 1])) / 2.0


def _term_cost(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(…, 2) x (…, 2) -> (…) in [0, 1]: owner kind (objective vs row), coefficient."""
    return ((a[..., 0] != b[..., 0]) + _delta(a[..., 1], b[..., 1])) / 2.0


# ----------------------------------------------------------------------------- WL colours


def _either_sign(canon: _Canon, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Coefficients as WL labels: |value| in '=' rows that read the same negated (rows < 0: the objective)."""
    if not canon.m or not len(values):
        return values
    either = (rows >= 0) & (canon.row[np.maximum(rows, 0), 0] == _EQ_EITHER)
    return np.where(either, np.abs(values), values)


class _Joint:
    """Both models as one disjoint graph: nodes [A vars, A rows, A terms, B vars, B rows, B terms]."""

    def __init__(self, a: _Canon, b: _Canon):
        self.a, self.b = a, b
        self.off = np.cumsum([0, a.n, a.m, a.t, b.n, b.m, b.t])
        self.split = int(self.off[3])  # first node of B
        self.N = int(self.off[-1])
        labels = []
        for feats_a, feats_b in ((a.var, b.var), (a.row, b.row), (_term_labels(a), _term_labels(b))):
            both = np.concatenate([_r(feats_a), _r(feats_b)])
            _, ids = np.unique(both, axis=0, return_inverse=True) if len(both) else (None, np.zeros(0, np.int64))
            labels.append((ids.reshape(-1), len(feats_a)))
        shift, parts_a, parts_b = 0, [], []
        for ids, n_a in labels:  # disjoint id ranges for variables, rows and terms
            parts_a.append(ids[:n_a] + shift)
            parts_b.append(ids[n_a:] + shift)
            shift += int(ids.max()) + 1 if len(ids) else 0
        self.initial = np.concatenate(parts_a + parts_b).astype(np.int64)
        # edges both ways. Labels: the canonical coefficient (in [-1, 1]; '=' rows that read the same
        # negated carry |coefficient|) for row–variable edges, 2 + multiplicity for term–variable
        # edges, 10 for term–row edges: the three kinds never share a label.
        src, dst, val = [], [], []
        for canon, v0, r0, t0 in ((a, self.off[0], self.off[1], self.off[2]), (b, self.off[3], self.off[4], self.off[5])):
            owned = np.flatnonzero(canon.t_row >= 0)
            for s_, d_, lab in (
                (canon.e_row + r0, canon.e_var + v0, _either_sign(canon, canon.e_row, canon.e_val)),
                (canon.q_term + t0, canon.q_var + v0, 2.0 + canon.q_mult),
                (owned + t0, canon.t_row[owned] + r0, np.full(len(owned), 10.0)),
            ):
                src += [s_, d_]
                dst += [d_, s_]
                val += [lab, lab]
        self.src = np.concatenate(src).astype(np.int64)
        self.dst = np.concatenate(dst).astype(np.int64)
        _, elab = np.unique(_r(np.concatenate(val)), return_inverse=True)
        rng = np.random.default_rng(12345)
        self.edge_hash = rng.integers(1, 2**63, size=max(int(elab.max()) + 1 if len(elab) else 1, 1), dtype=np.uint64)[elab.reshape(-1)]
        self.work = 0

    def refine(self, colours: np.ndarray) -> list[np.ndarray]:
        """WL rounds until the partition stops splitting; returns the colours of every round."""
        history = [colours]
        if self.N == 0:
            return history
        rng = np.random.default_rng(777)
        n_colours = len(np.unique(colours))
        while True:
            table = rng.integers(1, 2**63, size=int(colours.max()) + 1, dtype=np.uint64)
            h = _mix(table[colours[self.dst]] ^ self.edge_hash)
            agg = np.zeros(self.N, dtype=np.uint64)
            np.add.at(agg, self.src, h)  # multiset hash of (edge label, neighbour colour)
            self.work += len(self.src)
            _, new = np.unique(np.stack([colours.astype(np.uint64), agg], axis=1), axis=0, return_inverse=True)
            new = new.reshape(-1).astype(np.int64)
            count = int(new.max()) + 1 if len(new) else 0
            if count == n_colours:
                return history
            history.append(new)
            colours, n_colours = new, count


def _term_labels(canon: _Canon) -> np.ndarray:
    """(T, 2) owner kind and coefficient (sign-free in '=' rows that read the same negated)."""
    return np.stack([canon.term[:, 0], _either_sign(canon, canon.t_row, canon.term[:, 1])], axis=1) if canon.t else canon.term


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer (uint64 arithmetic wraps)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _individualize(joint: _Joint, colours: np.ndarray) -> np.ndarray:
    """Break ties in classes holding nodes of both models, one pair at a time, refining after each.

    For models equal up to renaming this finds an isomorphism unless WL cannot separate
    non-equivalent nodes; it stops after _WORK_CAP edge visits (then ties are zipped in order).
    """
    in_a = np.zeros(joint.N, dtype=bool)
    in_a[: joint.split] = True
    while joint.N and joint.work < _WORK_CAP:
        k = int(colours.max()) + 1
        n_a = np.bincount(colours[in_a], minlength=k)
        n_b = np.bincount(colours[~in_a], minlength=k)
        open_ = np.flatnonzero((n_a >= 1) & (n_b >= 1) & (n_a + n_b > 2))
        if not len(open_):
            break
        c = open_[np.argmin((n_a + n_b)[open_])]
        members = np.flatnonzero(colours == c)
        a, b = members[in_a[members]][0], members[~in_a[members]][0]
        colours = colours.copy()
        colours[[a, b]] = k
        colours = joint.refine(colours)[-1]
    return colours


# ----------------------------------------------------------------------------- matching and cost


def _match_levels(levels: list[np.ndarray], a_nodes: np.ndarray, b_nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pair A nodes with B nodes of equal colour, finest level first; returns (A index, B index) pairs."""
    free_a = np.ones(len(a_nodes), dtype=bool)
    free_b = np.ones(len(b_nodes), dtype=bool)
    pa, pb = [], []
    for col in levels:
        ia, ib = np.flatnonzero(free_a), np.flatnonzero(free_b)
        if not len(ia) or not len(ib):
            break
        width = len(ia) + len(ib)
        ka, kb = _rank_keys(col[a_nodes[ia]], width), _rank_keys(col[b_nodes[ib]], width)
        _, xa, xb = np.intersect1d(ka, kb, assume_unique=True, return_indices=True)
        pa.append(ia[xa])
        pb.append(ib[xb])
        free_a[ia[xa]] = False
        free_b[ib[xb]] = False
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64)  # noqa: E731
    return cat(pa), cat(pb)


def _rank_keys(colours: np.ndarray, width: int) -> np.ndarray:
    """colour * width + rank of the node within its colour (in index order): equal keys pair up."""
    order = np.argsort(colours, kind="stable")
    sorted_c = colours[order]
    first = np.searchsorted(sorted_c, sorted_c, side="left")
    rank = np.empty(len(colours), dtype=np.int64)
    rank[order] = np.arange(len(colours)) - first
    return colours.astype(np.int64) * width + rank


def _assign(cost: np.ndarray, fa: np.ndarray, fb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Optimal assignment of the leftovers; beyond _ASSIGN_CAP entries, sort both sides by features and zip."""
    if not len(fa) or not len(fb):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if len(fa) * len(fb) <= _ASSIGN_CAP:
        from scipy.optimize import linear_sum_assignment  # imported here: scipy.optimize costs ~0.5 s to import

        return linear_sum_assignment(cost(fa, fb))
    k = min(len(fa), len(fb))
    return np.lexsort(fa.T[::-1])[:k], np.lexsort(fb.T[::-1])[:k]


def _distance_ordered(a: _Canon, b: _Canon) -> float:
    joint = _Joint(a, b)
    history = joint.refine(joint.initial)
    final = _individualize(joint, history[-1])
    levels = [final] + history[::-1]
    o = joint.off

    def pairs(a_nodes, b_nodes, fa, fb, da, db, node_cost):
        pa, pb = _match_levels(levels, a_nodes, b_nodes)
        left_a = np.setdiff1d(np.arange(len(a_nodes)), pa)
        left_b = np.setdiff1d(np.arange(len(b_nodes)), pb)

        def cost(x, y):  # attribute cost + a degree term, (len x, len y)
            dx, dy = da[left_a][:, None], db[left_b][None, :]
            return node_cost(x[:, None, :], y[None, :, :]) + 0.5 * np.abs(dx - dy) / (dx + dy + 1)

        xa, xb = _assign(cost, fa[left_a], fb[left_b])
        return np.concatenate([pa, left_a[xa]]).astype(np.int64), np.concatenate([pb, left_b[xb]]).astype(np.int64)

    def var_degree(c: _Canon) -> np.ndarray:
        return np.bincount(c.e_var, minlength=c.n) + np.bincount(c.q_var, minlength=c.n)

    va, vb = pairs(np.arange(o[0], o[1]), np.arange(o[3], o[4]), a.var, b.var, var_degree(a), var_degree(b), _var_cost)
    row_deg_a = np.bincount(a.e_row, minlength=a.m) + np.bincount(a.t_row[a.t_row >= 0], minlength=a.m)
    row_deg_b = np.bincount(b.e_row, minlength=b.m) + np.bincount(b.t_row[b.t_row >= 0], minlength=b.m)
    ra, rb = pairs(np.arange(o[1], o[2]), np.arange(o[4], o[5]), a.row, b.row, row_deg_a, row_deg_b, _row_cost)
    ta, tb = pairs(np.arange(o[2], o[3]), np.arange(o[5], o[6]), a.term, b.term,
                   np.bincount(a.q_term, minlength=a.t), np.bincount(b.q_term, minlength=b.t), _term_cost)
    return _edit_cost(a, b, va, vb, ra, rb, ta, tb) / _total(a, b)


def _total(a: _Canon, b: _Canon) -> float:
    """Cost of deleting A and inserting B: one per node, edge and objective (a term has an edge to its owner)."""
    return float(sum(c.n + c.m + len(c.e_val) + 1 + 2 * c.t + len(c.q_var) for c in (a, b)))


def _edges_unmatched(key_a: np.ndarray, key_b: np.ndarray, n_a: int, n_b: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Edges kept by the matching (mapped A keys equal to B keys): (deleted + inserted count, A index, B index)."""
    _, xa, xb = np.intersect1d(key_a, key_b, assume_unique=True, return_indices=True)
    return float(n_a - len(xa) + n_b - len(xb)), xa, xb


def _edit_cost(a: _Canon, b: _Canon, va, vb, ra, rb, ta, tb) -> float:
    """Edit cost under the matching (va[i] ↔ vb[i] variables, ra[i] ↔ rb[i] rows, ta[i] ↔ tb[i] terms)."""
    cost = float(_var_cost(a.var[va], b.var[vb]).sum()) + (a.n - len(va)) + (b.n - len(vb))
    cost += (a.m - len(ra)) + (b.m - len(rb)) + (a.t - len(ta)) + (b.t - len(tb))
    cost += ((a.sense != b.sense) + float(_delta(np.array([a.constant]), np.array([b.constant]))[0])) / 2.0
    var_map = np.full(a.n, -1, dtype=np.int64)
    var_map[va] = vb
    row_map = np.full(a.m, -1, dtype=np.int64)
    row_map[ra] = rb
    term_map = np.full(a.t, -1, dtype=np.int64)
    term_map[ta] = tb
    # row–variable edges: map A's (row, var) into B's indices; unmatched endpoints make an edge unmatched
    mr, mv = row_map[a.e_row], var_map[a.e_var]
    ok = (mr >= 0) & (mv >= 0)
    edits, xa, xb = _edges_unmatched(mr[ok] * max(b.n, 1) + mv[ok], b.e_row * max(b.n, 1) + b.e_var, len(a.e_val), len(b.e_val))
    cost += edits
    # term–variable edges: kept when both ends match; a different multiplicity (square vs product) costs 1
    mt, mq = term_map[a.q_term], var_map[a.q_var]
    ok_q = (mt >= 0) & (mq >= 0)
    edits, qa, qb = _edges_unmatched(mt[ok_q] * max(b.n, 1) + mq[ok_q], b.q_term * max(b.n, 1) + b.q_var, len(a.q_var), len(b.q_var))
    cost += edits + float((a.q_mult[ok_q][qa] != b.q_mult[qb]).sum())
    # term–owner edges (one per term): kept when the owners match (the objective matches the objective)
    in_row_a = a.t_row[ta] >= 0
    owner_a = np.full(len(ta), -1, dtype=np.int64)  # -1: the objective
    owner_a[in_row_a] = row_map[a.t_row[ta][in_row_a]]
    owner_a[in_row_a & (owner_a < 0)] = -2  # a row left unmatched
    same_owner = owner_a == b.t_row[tb]
    cost += 2.0 * float((~same_owner).sum()) + (a.t - len(ta)) + (b.t - len(tb))
    # per matched row pair: coefficient differences (linear, and of the terms the pair owns), in the
    # row's sign and (for '=') negated
    row_of = mr[ok][xa]
    val_a, val_b = a.e_val[ok][xa], b.e_val[xb]
    # float even when no linear coefficient is matched (bincount of nothing is an int array)
    plus = np.bincount(row_of, weights=_delta(val_a, val_b), minlength=b.m).astype(float)
    minus = np.bincount(row_of, weights=_delta(-val_a, val_b), minlength=b.m).astype(float)
    in_row = same_owner & (b.t_row[tb] >= 0)
    term_a, term_b = a.term[ta], b.term[tb]
    negated = term_a.copy()
    negated[:, 1] = -negated[:, 1]
    plus += np.bincount(b.t_row[tb][in_row], weights=_term_cost(term_a[in_row], term_b[in_row]), minlength=b.m)
    minus += np.bincount(b.t_row[tb][in_row], weights=_term_cost(negated[in_row], term_b[in_row]), minlength=b.m)
    cost += float(_term_cost(term_a[~in_row], term_b[~in_row]).sum())
    row_a, row_b = a.row[ra], b.row[rb]
    flipped = row_a.copy()
    flipped[:, 1] = -flipped[:, 1]
    both_eq = (row_a[:, 0] != _LE) & (row_b[:, 0] != _LE)
    keep = _row_cost(row_a, row_b) + plus[rb]
    negate = np.where(both_eq, _row_cost(flipped, row_b) + minus[rb], np.inf)
    cost += float(np.minimum(keep, negate).sum())
    return cost


def graph_distance(a: Model, b: Model) -> float:
    """Structural distance in [0, 1]; symmetric; 0 iff equal up to renaming, reordering, row negation/scaling."""
    ca, cb = _canonical(a), _canonical(b)
    da, db = ca.digest(), cb.digest()
    if da < db:
        d = _distance_ordered(ca, cb)
    elif db < da:
        d = _distance_ordered(cb, ca)
    else:  # same invariants: take the better of both directions so the result stays symmetric
        d = min(_distance_ordered(ca, cb), _distance_ordered(cb, ca))
    return float(min(max(d, 0.0), 1.0))


def equivalent(a: Model, b: Model) -> bool:
    """Weisfeiler–Lehman test: equal colour histograms on both graphs, quadratic term nodes included
    (and equal objective sense, constant).

    'False' is certain; 'True' is WL's answer (WL cannot separate some regular structures).
    """
    ca, cb = _canonical(a), _canonical(b)
    if (ca.n, ca.m, ca.t, len(ca.e_val), len(ca.q_var), ca.sense) != (cb.n, cb.m, cb.t, len(cb.e_val), len(cb.q_var), cb.sense):
        return False
    if _r(np.array([ca.constant]))[0] != _r(np.array([cb.constant]))[0]:
        return False
    joint = _Joint(ca, cb)
    colours = joint.refine(joint.initial)[-1]
    return bool(np.array_equal(np.sort(colours[: joint.split]), np.sort(colours[joint.split :])))


# ----------------------------------------------------------------------------- networkx view


def model_graph(model: Model) -> nx.Graph:
    """The graph in canonical form: ('v', name), ('c', index) and ('q', index) nodes, plus an 'objective' node.

    Variable nodes: vtype, lb, ub, obj. Constraint nodes (keyed by position; `name` is a label):
    sense ('<=' or '='), rhs. Coefficient edges: coef. The objective node (sense, constant) links
    to each variable with a nonzero obj coefficient. A quadratic term node (owner 'obj' or 'con',
    coef) links to its owner and to its variables ('qvar' edges with mult 1, or 2 for a square).
    """
    canon = _canonical(model)
    g = nx.Graph()
    g.add_node("objective", kind="obj", sense=model.sense, constant=float(model.obj_constant))
    for v in model.variables:
        lb, ub = _bounds(v.vtype, v.lb, v.ub)
        g.add_node(("v", v.name), kind="var", vtype=v.vtype, semi=v.semi, lb=lb, ub=ub, obj=v.obj)
        if v.obj != 0.0:
            g.add_edge("objective", ("v", v.name), kind="obj", coef=v.obj)
    for r, (c, (kind, rhs)) in enumerate(zip(model.constraints, canon.row)):
        g.add_node(("c", r), kind="con", name=c.name, sense="<=" if kind == _LE else "=", rhs=float(rhs), either_sign=bool(kind == _EQ_EITHER))
    names_v = [v.name for v in model.variables]
    for r, j, val in zip(canon.e_row, canon.e_var, canon.e_val):
        g.add_edge(("c", int(r)), ("v", names_v[j]), kind="coef", coef=float(val))
    for k, ((is_obj, coef), owner) in enumerate(zip(canon.term, canon.t_row)):
        g.add_node(("q", k), kind="quad", owner="obj" if is_obj else "con", coef=float(coef))
        g.add_edge(("q", k), "objective" if owner < 0 else ("c", int(owner)), kind="qown")
    for k, j, mult in zip(canon.q_term, canon.q_var, canon.q_mult):
        g.add_edge(("q", int(k)), ("v", names_v[j]), kind="qvar", mult=float(mult))
    return g


def edit_costs() -> dict:
    """The edit-cost model that graph_distance bounds, as cost functions for nx.graph_edit_distance.

    Exact GED under these costs divided by `graph_size(a) + graph_size(b)` is the distance that an
    optimal matching would give; objective edges cost nothing (their coefficients live on the variables).
    """

    def node_subst(x: dict, y: dict) -> float:
        if x["kind"] != y["kind"]:
            return 3.0  # never cheaper than deleting one and inserting the other
        if x["kind"] == "var":
            return float(_var_cost(_var_array(x), _var_array(y)))
        if x["kind"] == "con":
            return float(_row_cost(np.array([_kind(x), x["rhs"]]), np.array([_kind(y), y["rhs"]])))
        if x["kind"] == "quad":
            return float(_term_cost(np.array([x["owner"] == "obj", x["coef"]], dtype=float), np.array([y["owner"] == "obj", y["coef"]], dtype=float)))
        return ((x["sense"] != y["sense"]) + float(_delta(np.array(x["constant"]), np.array(y["constant"])))) / 2.0

    def edge_subst(x: dict, y: dict) -> float:
        if x["kind"] != y["kind"]:
            return 2.0
        if x["kind"] in ("obj", "qown"):
            return 0.0
        if x["kind"] == "qvar":
            return float(x["mult"] != y["mult"])
        return float(_delta(np.array(x["coef"]), np.array(y["coef"])))

    def edge_one(x: dict) -> float:
        return 0.0 if x["kind"] == "obj" else 1.0

    return dict(
        node_subst_cost=node_subst,
        node_del_cost=lambda x: 1.0,
        node_ins_cost=lambda x: 1.0,
        edge_subst_cost=edge_subst,
        edge_del_cost=edge_one,
        edge_ins_cost=edge_one,
    )


def graph_size(g: nx.Graph) -> int:
    """Nodes plus coefficient and quadratic-term edges: the cost of deleting the graph under `edit_costs`."""
    return g.number_of_nodes() + sum(1 for *_, k in g.edges(data="kind") if k != "obj")


def _var_array(x: dict) -> np.ndarray:
    return np.array([_vtype_code(x["vtype"], x["lb"], x["ub"], x["semi"]), x["lb"], x["ub"], x["obj"]], dtype=float)


def _kind(x: dict) -> float:
    return _LE if x["sense"] == "<=" else _EQ
