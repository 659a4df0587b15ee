"""The model as a bipartite variable–constraint graph, and a graded distance between two models.

Canonical form (what "equal" means): a '>=' row is negated into '<='; every row is scaled by a
positive factor so that its largest |coefficient| is 1 (scaling a row does not change the
feasible set); an '=' row may be negated, so its sign is fixed by rhs > 0, then by the sum of its
coefficients, and when both are 0 it is compared in both signs. Variables and the objective are
never rescaled (that would change what the optimum means). Numbers are compared after rounding
to 12 significant digits.

Distance: an edit cost under a node matching, divided by the cost of deleting one graph and
inserting the other, so it lies in [0, 1]. The matching comes from Weisfeiler–Lehman colours
refined on both graphs together (with individualization to break symmetric ties), matched from
the finest colours down to the initial labels; what is left is matched by an optimal assignment
(scipy's linear_sum_assignment) on attribute and degree costs. The design and its validation: docs/evaluation.md.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import networkx as nx
import numpy as np

from app.evaluation.model import Model

_VTYPE = {"C": 0.0, "I": 1.0, "B": 2.0}


def _vtype_code(vtype: str, lb: float, ub: float) -> float:
    """An integer variable in [0, 1] is a binary: MPS has no binary type, so writers state one
    either way (a BV bound, or integer markers with an upper bound of 1)."""
    return _VTYPE["B"] if vtype == "I" and lb == 0.0 and ub == 1.0 else _VTYPE[vtype]

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

    @property
    def n(self) -> int:
        return len(self.var)

    @property
    def m(self) -> int:
        return len(self.row)

    def digest(self) -> str:
        """Invariant under renaming and reordering: a fixed order of the two models for symmetry."""
        h = hashlib.sha256(f"{self.sense}{_r(np.array([self.constant]))[0]!r}".encode())
        for arr in (_sorted_rows(_r(self.var)), _sorted_rows(_r(self.row)), np.sort(_r(self.e_val))):
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
    var = np.array([[_vtype_code(v.vtype, v.lb, v.ub), v.lb, v.ub, v.obj] for v in model.variables], dtype=float).reshape(-1, 4)
    rows, cols, vals = [], [], []
    kind = np.zeros(model.n_cons)
    rhs = np.zeros(model.n_cons)
    for r, c in enumerate(model.constraints):
        for name, coef in c.coefs.items():
            if coef != 0.0:
                if name not in index:
                    raise ValueError(f"constraint {c.name!r} uses {name!r}, which is not a variable of the model")
                rows.append(r)
                cols.append(index[name])
                vals.append(coef)
        kind[r] = _EQ if c.sense == "=" else _LE
        rhs[r] = -c.rhs if c.sense == ">=" else c.rhs
    e_row, e_var = np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64)
    ge = np.array([c.sense == ">=" for c in model.constraints], dtype=bool)
    e_val = np.array(vals, dtype=float) * np.where(ge, -1.0, 1.0)[e_row]  # '>=' rows negated into '<='
    # scale each row so that its largest |coefficient| is 1 (rows without coefficients: |rhs| = 1)
    scale = np.zeros(model.n_cons)
    np.maximum.at(scale, e_row, np.abs(e_val))
    empty = scale == 0
    scale[empty] = np.where(rhs[empty] != 0, np.abs(rhs[empty]), 1.0)
    e_val = e_val / scale[e_row]
    rhs = rhs / scale
    # fix the sign of '=' rows: rhs > 0, else coefficient sum > 0, else sorted values >= their negation
    eq = np.flatnonzero(kind == _EQ)
    if len(eq):
        total = np.bincount(e_row, weights=e_val, minlength=model.n_cons)
        r_rhs, r_sum = _r(rhs), _r(total)
        sign = np.where(r_rhs[eq] != 0, np.sign(r_rhs[eq]), np.sign(r_sum[eq]))
        for k in np.flatnonzero(sign == 0):
            vals_k = np.sort(_r(e_val[e_row == eq[k]]))
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
        rhs = rhs * flip
    row = np.stack([kind, rhs], axis=1) if model.n_cons else np.zeros((0, 2))
    return _Canon(var, row, e_row, e_var, e_val, model.sense, float(model.obj_constant))


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


# ----------------------------------------------------------------------------- WL colours


class _Joint:
    """Both models as one disjoint graph: nodes [A vars, A rows, B vars, B rows]."""

    def __init__(self, a: _Canon, b: _Canon):
        self.a, self.b = a, b
        self.off = np.array([0, a.n, a.n + a.m, a.n + a.m + b.n, a.n + a.m + b.n + b.m])
        self.N = int(self.off[-1])
        vlab = np.concatenate([_r(a.var), _r(b.var)])
        rlab = np.concatenate([_r(a.row), _r(b.row)])
        _, vid = np.unique(vlab, axis=0, return_inverse=True) if len(vlab) else (None, np.zeros(0, np.int64))
        _, rid = np.unique(rlab, axis=0, return_inverse=True) if len(rlab) else (None, np.zeros(0, np.int64))
        vid, rid = vid.reshape(-1), rid.reshape(-1) + (vid.max() + 1 if len(vid) else 0)
        self.initial = np.concatenate([vid[: a.n], rid[: a.m], vid[a.n :], rid[a.m :]]).astype(np.int64)
        # edges both ways; '=' rows that read the same negated carry |coefficient| (sign-free)
        src, dst, val = [], [], []
        for canon, v0, r0 in ((a, self.off[0], self.off[1]), (b, self.off[2], self.off[3])):
            label = np.where(canon.row[canon.e_row, 0] == _EQ_EITHER, np.abs(canon.e_val), canon.e_val) if canon.m else canon.e_val
            src += [canon.e_row + r0, canon.e_var + v0]
            dst += [canon.e_var + v0, canon.e_row + r0]
            val += [label, label]
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
    in_a[: joint.off[2]] = True
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
    deg_a_v = np.bincount(a.e_var, minlength=a.n)
    deg_b_v = np.bincount(b.e_var, minlength=b.n)
    deg_a_r = np.bincount(a.e_row, minlength=a.m)
    deg_b_r = np.bincount(b.e_row, minlength=b.m)

    def pairs(a_nodes, b_nodes, fa, fb, da, db, node_cost):
        pa, pb = _match_levels(levels, a_nodes, b_nodes)
        left_a = np.setdiff1d(np.arange(len(a_nodes)), pa)
        left_b = np.setdiff1d(np.arange(len(b_nodes)), pb)

        def cost(x, y):  # attribute cost + a degree term, (len x, len y)
            dx, dy = da[left_a][:, None], db[left_b][None, :]
            return node_cost(x[:, None, :], y[None, :, :]) + 0.5 * np.abs(dx - dy) / (dx + dy + 1)

        xa, xb = _assign(cost, fa[left_a], fb[left_b])
        return np.concatenate([pa, left_a[xa]]).astype(np.int64), np.concatenate([pb, left_b[xb]]).astype(np.int64)

    va, vb = pairs(np.arange(o[0], o[1]), np.arange(o[2], o[3]), a.var, b.var, deg_a_v, deg_b_v, _var_cost)
    ra, rb = pairs(np.arange(o[1], o[2]), np.arange(o[3], o[4]), a.row, b.row, deg_a_r, deg_b_r, _row_cost)
    return _edit_cost(a, b, va, vb, ra, rb) / _total(a, b)


def _total(a: _Canon, b: _Canon) -> float:
    """Cost of deleting A and inserting B: one per node, edge and objective."""
    return float(a.n + a.m + len(a.e_val) + 1 + b.n + b.m + len(b.e_val) + 1)


def _edit_cost(a: _Canon, b: _Canon, va, vb, ra, rb) -> float:
    """Edit cost under the matching (va[i] ↔ vb[i] variables, ra[i] ↔ rb[i] rows)."""
    cost = float(_var_cost(a.var[va], b.var[vb]).sum()) + (a.n - len(va)) + (b.n - len(vb))
    cost += (a.m - len(ra)) + (b.m - len(rb))
    cost += ((a.sense != b.sense) + float(_delta(np.array([a.constant]), np.array([b.constant]))[0])) / 2.0
    # edges: map A's (row, var) into B's indices; unmatched endpoints make an edge unmatched
    var_map = np.full(a.n, -1, dtype=np.int64)
    var_map[va] = vb
    row_map = np.full(a.m, -1, dtype=np.int64)
    row_map[ra] = rb
    mr, mv = row_map[a.e_row], var_map[a.e_var]
    ok = (mr >= 0) & (mv >= 0)
    key_a = mr[ok] * max(b.n, 1) + mv[ok]
    key_b = b.e_row * max(b.n, 1) + b.e_var
    common, xa, xb = np.intersect1d(key_a, key_b, assume_unique=True, return_indices=True)
    cost += float(len(a.e_val) - len(common)) + float(len(b.e_val) - len(common))  # deleted + inserted edges
    # per matched row pair: coefficient differences, in the row's sign and (for '=') negated
    row_of = mr[ok][xa]
    val_a, val_b = a.e_val[ok][xa], b.e_val[xb]
    plus = np.bincount(row_of, weights=_delta(val_a, val_b), minlength=b.m)
    minus = np.bincount(row_of, weights=_delta(-val_a, val_b), minlength=b.m)
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
    """Weisfeiler–Lehman test: equal colour histograms on both graphs (and equal objective sense, constant).

    'False' is certain; 'True' is WL's answer (WL cannot separate some regular structures).
    """
    ca, cb = _canonical(a), _canonical(b)
    if (ca.n, ca.m, len(ca.e_val), ca.sense) != (cb.n, cb.m, len(cb.e_val), cb.sense):
        return False
    if _r(np.array([ca.constant]))[0] != _r(np.array([cb.constant]))[0]:
        return False
    joint = _Joint(ca, cb)
    colours = joint.refine(joint.initial)[-1]
    split = joint.off[2]
    return bool(np.array_equal(np.sort(colours[:split]), np.sort(colours[split:])))


# ----------------------------------------------------------------------------- networkx view


def model_graph(model: Model) -> nx.Graph:
    """Bipartite graph in canonical form: ('v', name) and ('c', name) nodes, plus an 'objective' node.

    Variable nodes: vtype, lb, ub, obj. Constraint nodes: sense ('<=' or '='), rhs. Edges: coef.
    The objective node (sense, constant) links to each variable with a nonzero obj coefficient.
    """
    canon = _canonical(model)
    g = nx.Graph()
    g.add_node("objective", kind="obj", sense=model.sense, constant=float(model.obj_constant))
    for v in model.variables:
        g.add_node(("v", v.name), kind="var", vtype=v.vtype, lb=v.lb, ub=v.ub, obj=v.obj)
        if v.obj != 0.0:
            g.add_edge("objective", ("v", v.name), kind="obj", coef=v.obj)
    for c, (kind, rhs) in zip(model.constraints, canon.row):
        g.add_node(("c", c.name), kind="con", sense="<=" if kind == _LE else "=", rhs=float(rhs), either_sign=bool(kind == _EQ_EITHER))
    names_v = [v.name for v in model.variables]
    names_c = [c.name for c in model.constraints]
    for r, j, val in zip(canon.e_row, canon.e_var, canon.e_val):
        g.add_edge(("c", names_c[r]), ("v", names_v[j]), kind="coef", coef=float(val))
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
        return ((x["sense"] != y["sense"]) + float(_delta(np.array(x["constant"]), np.array(y["constant"])))) / 2.0

    def edge_subst(x: dict, y: dict) -> float:
        if x["kind"] != y["kind"]:
            return 2.0
        if x["kind"] == "obj":
            return 0.0
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
    """Nodes plus coefficient edges: the cost of deleting the graph under `edit_costs`."""
    return g.number_of_nodes() + sum(1 for *_, k in g.edges(data="kind") if k == "coef")


def _var_array(x: dict) -> np.ndarray:
    return np.array([_vtype_code(x["vtype"], x["lb"], x["ub"]), x["lb"], x["ub"], x["obj"]], dtype=float)


def _kind(x: dict) -> float:
    return _LE if x["sense"] == "<=" else _EQ
