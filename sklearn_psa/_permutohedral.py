"""High-dimensional Gaussian filtering on the permutohedral lattice, in torch.

The permutohedral lattice (Adams, Baek and Davis, "Fast High-Dimensional
Filtering Using the Permutohedral Lattice", Eurographics 2010) approximates

    out_i = sum_j exp(-|f_i - f_j|^2 / 2) * in_j

for ``N`` points with ``d``-dimensional features ``f`` in O(N d^2) time instead
of O(N^2): every point is *splatted* onto the ``d + 1`` vertices of the simplex
of the lattice ``A*_d`` that encloses it (barycentric weights), the lattice
values are *blurred* with a ``[1/2, 1, 1/2]`` stencil along each of the
``d + 1`` lattice directions, and *sliced* back at the points with the same
weights.

The conventions are those of Krähenbühl's dense CRF code (the code behind
``pydensecrf``), so that a CRF built on this filter agrees with that package:
the same elevation and scaling of the features, the same rounding to the
enclosing simplex, the same blur stencil and direction order, the same final
scale ``1 / (1 + 2^-d)``; like that code, the filter keeps the self term
(``out_i`` includes ``in_i``).

A lattice depends only on the features, so it is built once and then applied
to any number of value channels at once. Where Krähenbühl's code hashes the
vertex keys, this one packs them into int64 and deduplicates them with sorts:
points by enclosing simplex first, then the simplices' corners by vertex
(fewer keys to sort than one per point and corner). Splatting and slicing are sparse (CSR)
matrix products and each blur step gathers two neighbour rows, so the same
code runs on CPU and CUDA. :class:`LatticeFilter` applies a weighted sum of
several such filters (the dense CRF's Gaussian and bilateral kernels) as one
splat, one blur and one slice.
"""

import math
import warnings

import torch

__all__ = ["PermutohedralLattice", "LatticeFilter"]

# Packed vertex keys (with room for neighbour offsets) must fit in int64.
_MAX_KEY_BITS = 62


def _sparse_csr(crow, col, values, size):
    with warnings.catch_warnings():
        # "Sparse CSR tensor support is in beta state": we use only mm/addmm.
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


def _elevate(features):
    """Embed ``(d, N)`` features in the hyperplane ``sum = 0`` of R^(d+1).

    Scaled as in Adams et al. (p. 5-6) so that the lattice blur approximates a
    unit-variance Gaussian; returns ``(d + 1, N)``.
    """
    d, n = features.shape
    inv_std_dev = math.sqrt(2.0 / 3.0) * (d + 1)
    elevated = features.new_empty((d + 1, n))
    running = torch.zeros_like(features[0])
    for j in range(d, 0, -1):
        scaled = features[j - 1] * (inv_std_dev / math.sqrt((j + 1) * j))
        torch.sub(running, scaled * j, out=elevated[j])
        running += scaled
    elevated[0] = running
    return elevated


def _segment_ids(crow, total, dtype=torch.int64):
    """Segment id of each of ``total`` positions, for segment starts ``crow``.

    Like ``repeat_interleave(arange(g), counts)`` (empty segments allowed),
    about 3x faster on CPU.
    """
    marks = torch.zeros(total + 1, dtype=dtype, device=crow.device)
    marks.index_add_(0, crow[:-1], torch.ones(crow.numel() - 1, dtype=dtype, device=crow.device))
    return torch.cumsum(marks[:total], 0, dtype=dtype).sub_(1)


def _group(keys):
    """Group equal int64 ``keys``, numbering the groups by first occurrence.

    Returns
    -------
    group_of : (n,) group id of each element.
    grouped : (n,) element indices, group by group (ascending within a group).
    crow : (g + 1,) where each group starts in ``grouped``.
    sorted_keys : (g,) the distinct keys in increasing order.
    by_occurrence : (g,) position in ``sorted_keys`` of group i.
    group_of_sorted : (g,) group id of ``sorted_keys[k]``.
    """
    n = keys.numel()
    dev = keys.device
    sorted_keys, order = torch.sort(keys, stable=True)
    first = torch.ones(n, dtype=torch.bool, device=dev)
    torch.ne(sorted_keys[1:], sorted_keys[:-1], out=first[1:])
    starts = torch.nonzero(first).view(-1)
    unique_keys = sorted_keys.index_select(0, starts)
    del sorted_keys
    g = starts.numel()
    # Stable sort: the first element of each run is its first occurrence.
    by_occurrence = torch.argsort(order.index_select(0, starts))
    group_of_sorted = torch.empty_like(by_occurrence).scatter_(0, by_occurrence, torch.arange(g, device=dev))
    ids = torch.cumsum(first, 0).sub_(1)
    del first
    group_of = torch.empty_like(order).scatter_(0, order, group_of_sorted.index_select(0, ids))
    del ids
    counts = torch.diff(starts, append=torch.tensor([n], device=dev)).index_select(0, by_occurrence)
    crow = torch.zeros(g + 1, dtype=torch.int64, device=dev)
    torch.cumsum(counts, 0, out=crow[1:])
    small = torch.int32 if n < 2**31 - 1 else torch.int64
    shift = (starts.index_select(0, by_occurrence) - crow[:-1]).to(small)
    shift = shift.index_select(0, _segment_ids(crow, n, small)).add_(torch.arange(n, dtype=small, device=dev))
    grouped = order.index_select(0, shift)
    return group_of, grouped, crow, unique_keys, by_occurrence, group_of_sorted


class PermutohedralLattice:
    """The permutohedral lattice of a set of points, built once.

    Parameters
    ----------
    features : torch.Tensor of shape (N, d)
        Point features, already divided by the kernel's standard deviations,
        as float32 (or float64 for a more exact lattice).

    Attributes
    ----------
    n_points, dim : int
        ``N`` and ``d``.
    n_vertices : int
        Number of lattice vertices touched (``M``), numbered in the order the
        points first touch them.
    index_dtype : torch.dtype
        int32 (or int64 for more than 2^31 point-corner pairs).
    offsets : torch.Tensor of shape (N, d + 1), index_dtype
        Vertex index of each point's simplex corners.
    weights : torch.Tensor of shape (N, d + 1)
        Barycentric weights of the corners (each row sums to 1).
    splat_crow : torch.Tensor of shape (M + 1,), int64
    splat_point : torch.Tensor of shape (N * (d + 1),), index_dtype
    splat_weight : torch.Tensor of shape (N * (d + 1),)
        The splat matrix (M x N) in CSR form: row ``i`` lists the points
        touching vertex ``i`` and their barycentric weights.
    neighbours : list of (torch.Tensor, torch.Tensor)
        For each of the ``d + 1`` blur directions, the index of each vertex's
        two neighbours along it, ``-1`` where the neighbour was never touched.
    alpha : float
        Scale applied when slicing, ``1 / (1 + 2^-d)``.
    """

    def __init__(self, features):
        if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
            raise ValueError(f"features must be a non-empty (N, d) tensor, got shape {tuple(features.shape)}")
        if not features.is_floating_point():
            raise TypeError(f"features must be floating point, got {features.dtype}")
        n, d = features.shape
        d1 = d + 1
        self.n_points, self.dim = n, d
        self.alpha = 1.0 / (1.0 + 2.0 ** (-d))
        dev = features.device
        elevated = _elevate(features.t().contiguous())

        # Closest point of the 0-coloured sublattice (d+1) Z^(d+1), coordinate-wise.
        # (In-place steps keep the peak memory down; the arithmetic is that of
        # Krähenbühl's code, and these differences of nearby floats are exact.)
        down = 1.0 / d1
        rem0 = elevated.mul(down).round_()
        total = rem0.sum(0)
        rem0 *= d1
        residual = elevated.sub_(rem0)
        del elevated
        # rank[i]: position of coordinate i when the residuals are sorted in
        # decreasing order, ties going to the lower index first.
        rank = torch.zeros((d1, n), dtype=torch.uint8, device=dev)
        for i in range(d):
            for j in range(i + 1, d1):
                less = residual[i] < residual[j]
                rank[i] += less
                rank[j] += ~less
        # A rounded point off the hyperplane (total != 0) wraps the ranks around
        # (|total| <= d / 2, so one wrap is enough) and moves rem0 with them.
        raw = rank.to(residual.dtype).add_(total)
        del total
        # -(d + 1) * floor(raw / (d + 1)) for integer raw (the 0.5 keeps it exact in floats)
        wrap = torch.floor((raw + 0.5) * down).mul_(-d1)
        rem0 += wrap
        residual -= wrap
        rank = raw.add_(wrap).to(torch.int64)
        del raw, wrap

        # Barycentric coordinates (Adams et al., p. 10): with v sorted by rank
        # (vs[k] = v of the coordinate of rank k), corner p weighs
        # vs[d - p] - vs[d - p + 1], and corner 0 takes 1 + vs[d] - vs[0].
        v = residual.mul_(down)
        vs = torch.empty_like(v).scatter_(0, rank, v)
        rank = rank.to(torch.uint8)
        del v, residual
        weights = torch.empty_like(vs)
        torch.sub(vs[:d].flip(0), vs[1:].flip(0), out=weights[1:])
        torch.add(vs[d], 1.0 - vs[0], out=weights[0])
        del vs
        self.weights = weights.t().contiguous()
        del weights

        # Corner r of the simplex is rem0 + canonical[r][rank] with
        # canonical[r][k] = r for k <= d - r, else r - (d + 1); only the first d
        # coordinates identify it (they sum to 0). Pack them in mixed radix,
        # with margins so that neighbour keys pack by adding a constant.
        rem0 = rem0[:d]
        if not bool(torch.isfinite(rem0).all()) or float(rem0.abs().max()) > 2.0 ** 52:
            raise ValueError(
                "the lattice coordinates are beyond 2**52 (or not finite): the features span "
                "too wide a range for their standard deviations (use larger standard deviations)"
            )
        rem0 = rem0.to(torch.int64)
        low = rem0.amin(1) - 2 * d1
        span = rem0.amax(1) + 2 * d1 - low + 1
        key_bits = float(torch.log2(span.double()).sum())
        if key_bits > _MAX_KEY_BITS:
            raise ValueError(
                f"the lattice keys need {key_bits:.0f} bits, more than the {_MAX_KEY_BITS} that fit in "
                "int64: the features span too wide a range for their standard deviations (use larger "
                "standard deviations, or a smaller image)"
            )
        rank_radix = d1**d
        # Simplex keys add the rank permutation to the corner-0 key; where they do not
        # fit, every point is grouped on its own (same result, more work).
        group_simplices = key_bits + math.log2(rank_radix) <= _MAX_KEY_BITS
        strides = [1] * d
        for i in range(1, d):
            strides[i] = strides[i - 1] * int(span[i - 1])
        stride_sum = sum(strides)
        base = torch.zeros(n, dtype=torch.int64, device=dev)  # packed key of corner 0
        code = torch.zeros(n, dtype=torch.int64, device=dev)  # the rank permutation
        for i in range(d):
            base += (rem0[i] - low[i]) * strides[i]
            code += rank[i].to(torch.int64) * d1**i
        del rem0

        # Points in the same simplex share its corners: group the points by
        # simplex first, then the (fewer) simplex corners by vertex. Groups
        # are numbered in the order the points first touch them, which keeps
        # the splat and slice products local in memory.
        if group_simplices:
            simplex_of, by_simplex, simplex_crow, _, _, _ = _group(base * rank_radix + code)
        else:
            simplex_of = by_simplex = torch.arange(n, device=dev)
            simplex_crow = torch.arange(n + 1, device=dev)
        del code
        first_point = by_simplex.index_select(0, simplex_crow[:-1])
        n_simplices = first_point.numel()
        # Going from corner r - 1 to corner r adds 1 to every coordinate but
        # the one of rank d - r + 1, which loses d: in packed form, add
        # stride_sum - (d + 1) * stride[coordinate of rank d - r + 1].
        rank = rank.index_select(1, first_point).to(torch.int64)
        stride_of = torch.tensor(strides + [0], dtype=torch.int64, device=dev) * d1
        stride_by_rank = torch.empty_like(rank).scatter_(0, rank, stride_of.view(d1, 1).expand_as(rank))
        corners = torch.empty((n_simplices, d1), dtype=torch.int64, device=dev)
        corners[:, 0] = base.index_select(0, first_point)
        for r in range(1, d1):
            torch.sub(corners[:, r - 1], stride_by_rank[d - r + 1], out=corners[:, r])
            corners[:, r] += stride_sum
        del base, rank, stride_by_rank
        corner_vertex, by_vertex, vertex_crow, keys, by_touch, new_id = _group(corners.view(-1))
        del corners
        m = keys.numel()
        self.n_vertices = m
        # Point and vertex indices are stored as int32 where they fit.
        self.index_dtype = torch.int32 if n * d1 < 2**31 - 1 else torch.int64
        self.offsets = corner_vertex.view(n_simplices, d1).to(self.index_dtype).index_select(0, simplex_of)
        del corner_vertex, simplex_of

        # CSR structure of the splat matrix (M x N): row i lists the points
        # touching vertex i (splat_point) with their barycentric weights
        # (splat_weight), expanded from the simplex corners of each vertex.
        simplex, corner = torch.div(by_vertex, d1, rounding_mode="floor"), by_vertex.remainder(d1)
        size = torch.diff(simplex_crow).index_select(0, simplex)
        out_start = torch.zeros(size.numel() + 1, dtype=torch.int64, device=dev)
        torch.cumsum(size, 0, out=out_start[1:])
        self.splat_crow = out_start.index_select(0, vertex_crow)
        nnz = n * d1
        # (The expansion is done in int32 where it fits, to halve its memory.)
        segment = _segment_ids(out_start, nnz, self.index_dtype)
        shift = (simplex_crow.index_select(0, simplex) - out_start[:-1]).to(self.index_dtype)
        del simplex, size, out_start
        position = shift.index_select(0, segment).add_(torch.arange(nnz, dtype=self.index_dtype, device=dev))
        del shift
        self.splat_point = by_simplex.to(self.index_dtype).index_select(0, position)
        del position, by_simplex, by_vertex
        entry = corner.to(self.index_dtype).index_select(0, segment).add_(self.splat_point * d1)
        del segment, corner
        self.splat_weight = self.weights.view(-1).index_select(0, entry)
        del entry

        # Blur neighbours along the d + 1 lattice directions: the direction-j
        # neighbours of key k are k - 1 + (d + 1) e_j and k + 1 - (d + 1) e_j.
        self.neighbours = []
        for j in range(d1):
            delta = -stride_sum + (d1 * strides[j] if j < d else 0)
            pair = []
            for sign in (1, -1):
                target = keys + sign * delta
                pos = torch.searchsorted(keys, target).clamp_(max=m - 1)
                found = new_id.index_select(0, pos).masked_fill_(keys.index_select(0, pos) != target, -1)
                pair.append(found.index_select(0, by_touch))
            self.neighbours.append(tuple(pair))

    def filter(self, values):
        """Gaussian-filter ``values`` of shape ``(N, C)``; returns ``(N, C)``.

        A direct implementation with index operations (scatter-add splat,
        gather slice): simple rather than fast, and a cross-check of the
        sparse-matrix path of :class:`LatticeFilter`.
        """
        if values.ndim != 2 or values.shape[0] != self.n_points:
            raise ValueError(f"values must have shape ({self.n_points}, C), got {tuple(values.shape)}")
        m, c = self.n_vertices, values.shape[1]
        w = self.weights.to(values.dtype)
        current = values.new_zeros((m + 1, c))
        current.index_add_(0, self.offsets.view(-1), (values.unsqueeze(1) * w.unsqueeze(2)).view(-1, c))
        for n1, n2 in self.neighbours:
            n1 = torch.where(n1 >= 0, n1, m)
            n2 = torch.where(n2 >= 0, n2, m)
            blurred = current.new_zeros((m + 1, c))
            blurred[:m] = current[:m] + 0.5 * (current.index_select(0, n1) + current.index_select(0, n2))
            current = blurred
        sliced = current.index_select(0, self.offsets.view(-1)).view(self.n_points, -1, c)
        return (sliced * w.unsqueeze(2)).sum(1) * self.alpha


class LatticeFilter:
    """A weighted sum of (normalised) lattice filters, applied in one pass.

    Computes ``x -> add + sum_k w_k D_k K_k D_k x``, where ``K_k`` is the
    Gaussian filter of lattice ``k`` and ``D_k`` is the identity or, with
    ``normalize=True``, the symmetric normalisation ``diag(K_k 1)^(-1/2)``
    (Krähenbühl's ``NORMALIZE_SYMMETRIC``). The lattices are stacked into one
    splat matrix, one blur and one slice matrix, with the weights and
    normalisation folded into the matrices.

    Parameters
    ----------
    lattices : list of PermutohedralLattice
        Built on the same points.
    weights : list of float, optional
        ``w_k`` (default 1).
    normalize : bool, default=False
    dtype : torch.dtype, default=torch.float32
        Precision of the matrices (and of the values to filter).
    """

    def __init__(self, lattices, weights=None, *, normalize=False, dtype=torch.float32):
        if not lattices:
            raise ValueError("LatticeFilter needs at least one lattice")
        n = lattices[0].n_points
        if any(lat.n_points != n for lat in lattices):
            raise ValueError("all lattices must be built on the same points")
        weights = [1.0] * len(lattices) if weights is None else [float(w) for w in weights]
        dev = lattices[0].offsets.device
        self.n_points = n
        self.n_vertices = total = sum(lat.n_vertices for lat in lattices)
        width = sum(lat.dim + 1 for lat in lattices)
        # CSR indices in int32 where they fit (what the sparse BLAS use natively).
        index_dtype = torch.int32 if n * width < 2**31 - 1 else torch.int64

        vertex_start = [0]
        nnz_start = [0]
        for lat in lattices:
            vertex_start.append(vertex_start[-1] + lat.n_vertices)
            nnz_start.append(nnz_start[-1] + lat.splat_point.numel())
        splat_crow = torch.cat(
            [lat.splat_crow[:-1] + s0 for lat, s0 in zip(lattices, nnz_start)]
            + [torch.tensor([nnz_start[-1]], device=dev)]
        )
        splat_col = torch.cat([lat.splat_point.to(index_dtype) for lat in lattices])
        splat_val = torch.cat([lat.splat_weight.to(dtype) for lat in lattices])
        slice_col = torch.cat([lat.offsets.to(index_dtype) + v0 for lat, v0 in zip(lattices, vertex_start)], 1)
        slice_val = torch.cat([lat.weights.to(dtype) * lat.alpha for lat in lattices], 1)
        self._splat = _sparse_csr(splat_crow.to(index_dtype), splat_col.to(index_dtype), splat_val, (total, n))
        self._slice = _sparse_csr(
            torch.arange(0, n * width + 1, width, device=dev).to(index_dtype),
            slice_col.view(-1).to(index_dtype),
            slice_val.view(-1),
            (n, total),
        )

        # Blur steps over the stacked vertices; a missing neighbour (or a
        # direction a lower-dimensional lattice does not have) reads the zero
        # row `total`, which leaves the vertex unchanged.
        self._steps = []
        for j in range(max(lat.dim + 1 for lat in lattices)):
            pair = []
            for side in range(2):
                parts = []
                for lat, v0 in zip(lattices, vertex_start):
                    if j <= lat.dim:
                        nb = lat.neighbours[j][side]
                        parts.append(torch.where(nb >= 0, nb + v0, total))
                    else:
                        parts.append(torch.full((lat.n_vertices,), total, dtype=torch.int64, device=dev))
                pair.append(torch.cat(parts))
            self._steps.append(tuple(pair))

        # Fold the weights and the normalisation into the matrix values. The
        # splat matrix holds lattice k in rows vertex_start[k]:vertex_start[k+1],
        # i.e. entries nnz_start[k]:nnz_start[k+1]; the slice matrix holds it in
        # columns of each row.
        if normalize:
            # K_k 1 for every k at once: splat and blur ones, then slice each
            # lattice's block of vertices into its own column.
            blurred = self._blur(self._splat @ torch.ones((n, 1), dtype=dtype, device=dev))
            blocks = blurred.new_zeros((total, len(lattices)))
            for k in range(len(lattices)):
                blocks[vertex_start[k] : vertex_start[k + 1], k] = blurred[vertex_start[k] : vertex_start[k + 1], 0]
            norms = torch.rsqrt(self._slice @ blocks + 1e-20)
            values = self._splat.values()
            for k in range(len(lattices)):
                block = slice(nnz_start[k], nnz_start[k + 1])
                values[block] *= norms[:, k].index_select(0, splat_col[block])
        slice_values = self._slice.values().view(n, width)
        column = 0
        for k, (lat, w) in enumerate(zip(lattices, weights)):
            block = slice_values[:, column : column + lat.dim + 1]
            block *= (w * norms[:, k : k + 1]) if normalize else w
            column += lat.dim + 1

    def _blur(self, splatted):
        m = self.n_vertices
        current = splatted.new_empty((m + 1, splatted.shape[1]))
        current[:m] = splatted
        current[m] = 0
        spare = torch.empty_like(current)
        spare[m] = 0
        gathered = splatted.new_empty((m, splatted.shape[1]))
        other = torch.empty_like(gathered)
        for n1, n2 in self._steps:
            torch.index_select(current, 0, n1, out=gathered)
            torch.index_select(current, 0, n2, out=other)
            gathered += other
            torch.add(current[:m], gathered, alpha=0.5, out=spare[:m])
            current, spare = spare, current
        return current[:m]

    def __call__(self, values, add=None):
        """Filter ``values`` ``(N, C)``; ``add`` ``(N, C)``, if given, is added."""
        if values.ndim != 2 or values.shape[0] != self.n_points:
            raise ValueError(f"values must have shape ({self.n_points}, C), got {tuple(values.shape)}")
        blurred = self._blur(self._splat @ values)
        if add is None:
            return self._slice @ blurred
        return torch.addmm(add, self._slice, blurred)
