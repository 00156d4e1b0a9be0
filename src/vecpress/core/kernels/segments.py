"""Segment codes (the default ``saq`` codec) searched: the tiled in-RAM layout, the query's
preparation and the pruned scan. The encoder and packing are in ``segment_encoding``."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .heap import _finish, _heap_init, _heap_offer, _heap_size, _row_at
from .intrinsics import _VECTORISE, _prefetch, popcount64, weighted_popcount8
from .planes import quantize_planes

# --------------------------------------------------------------------------- segment codes
#
# Segment codes (``SegmentCodec``): the rotated vector is cut into segments of whole 64-bit
# words, segment ``s`` gets ``seg_bits[s]`` bits per coordinate (0 = not coded) and its own
# scale. Plane ``b`` (bit ``b`` of the levels) of segment ``s`` is ``words_s`` words long and
# starts at word ``plane_at[s, b]`` of the row. The layout puts every segment's top plane (its
# sign plane) first: the first ``n_sign`` words of a row are its 1-bit code.
# ``seg_starts`` (S + 1) holds the segments' first dimensions (multiples of 64).
#
# In RAM the rows are stored in tiles of ``TILE_ROWS`` rows (``write_tiles``): a tile holds
# word 0 of its rows' sign planes side by side, then word 1, ... then the rest of each row.
# The 1-bit pass then reads each sign word of 256 rows as one run, which the compiler turns
# into vector instructions (vpopcntq on AVX-512): twice as fast as row by row.

#: rows per tile of the in-RAM layout of segment codes
TILE_ROWS = 256
_TILE_SHIFT = 8
_TILE_MASK = TILE_ROWS - 1


@njit(cache=True, nogil=True)
def write_tiles(tiles, start, codes, n_sign):
    """Store code rows (n, width) as rows ``start..`` of ``tiles`` (n_tiles, TILE_ROWS * width):
    within a tile, word ``i < n_sign`` of lane ``l`` is at ``i * TILE_ROWS + l``, and the other
    words of lane ``l`` follow each other from ``n_sign * TILE_ROWS + l * (width - n_sign)``."""
    width = codes.shape[1]
    rest = width - n_sign
    for j in range(codes.shape[0]):
        row = start + j
        tile = row >> _TILE_SHIFT
        lane = row & _TILE_MASK
        for i in range(n_sign):
            tiles[tile, (i << _TILE_SHIFT) + lane] = codes[j, i]
        base = (n_sign << _TILE_SHIFT) + lane * rest
        for i in range(rest):
            tiles[tile, base + i] = codes[j, n_sign + i]


@njit(cache=True, nogil=True)
def read_tiles(tiles, rows, n_sign, width):
    """Code rows (len(rows), width) back from the tiled layout of :func:`write_tiles`."""
    out = np.empty((rows.shape[0], width), dtype=tiles.dtype)
    for j in range(rows.shape[0]):
        for i in range(width):
            out[j, i] = _code_word(tiles, rows[j], i, n_sign, width)
    return out


@njit(inline="always")
def _code_word(tiles, row, i, n_sign, width):
    """Word ``i`` of code row ``row`` in the tiled layout."""
    tile = row >> _TILE_SHIFT
    lane = row & _TILE_MASK
    if i < n_sign:
        return tiles[tile, (i << _TILE_SHIFT) + lane]
    return tiles[tile, (n_sign << _TILE_SHIFT) + lane * (width - n_sign) + (i - n_sign)]


#: 2**(e - 25) for the exponent field e of a float16 (e = 0: subnormal scale 2**-24)
_HALF_SCALE = np.array([2.0 ** -24] + [2.0 ** (e - 25) for e in range(1, 32)])


@njit(inline="always")
def _half_ratio(halves, row, s):
    """Segment ``s``'s factor ratio: a non-negative float16, read from the uint16 view of the
    factor columns (after column 0, which is the float32 sign-plane factor)."""
    h = halves[row, 2 + s]
    exponent = (h >> np.uint16(10)) & np.uint16(31)
    mantissa = np.uint32(h & np.uint16(1023)) | (np.uint32(exponent != 0) << np.uint32(10))
    return np.float64(mantissa) * _HALF_SCALE[exponent]


@njit(inline="always")
def _segment_score(codes, factors, halves, row, query, step, low, seg_sums, seg_starts,
                   seg_bits, plane_at, seg_mid, n_sign, width):
    """Estimated <r, q> of one row (tiled layout): per segment, factor * <level - mid, q'>.
    Segments of one word each (every code of up to 384 dimensions) take
    :func:`_one_word_segment_score`, which computes the same in loops the compiler unrolls."""
    if seg_starts[1] - seg_starts[0] <= 64:
        return _one_word_segment_score(codes, factors, halves, row, query, step, low, seg_sums,
                                       seg_starts, seg_bits, plane_at, seg_mid, n_sign, width)
    return _any_segment_score(codes, factors, halves, row, query, step, low, seg_sums,
                              seg_starts, seg_bits, plane_at, seg_mid, n_sign, width)


@njit(inline="always")
def _plane_dot(cw, query, i, eight):
    """sum_j popcount(cw & query[i, j]) << j over the query's planes (8: one vector op)."""
    if eight:
        return weighted_popcount8(cw, query, i)
    acc = np.uint64(0)
    for j in range(query.shape[1]):
        acc += popcount64(cw & query[i, j]) << np.uint64(j)
    return acc


#: the most bit planes below a segment's sign plane (8-bit codes)
_MAX_LOWER_PLANES = 7


@njit(inline="always")
def _one_word_segment_score(codes, factors, halves, row, query, step, low, seg_sums,
                            seg_starts, seg_bits, plane_at, seg_mid, n_sign, width):
    """:func:`_any_segment_score` where every segment is one word: the sign plane's word
    from the sign runs, then the lower planes, which lie next to each other in the row's
    other words, in a loop of constant length that the compiler unrolls. With loops of the
    segment's own plane and word counts a full score took about 1.7 times as long (90
    against 50 ns a row in cache on the benchmark's codes of 6, 5, 5, 4, 3 and 1 bits)."""
    tile = row >> _TILE_SHIFT
    lane = row & _TILE_MASK
    rest = (n_sign << _TILE_SHIFT) + lane * (width - n_sign) - n_sign  # (word p: at rest + p)
    eight = query.shape[1] == 8
    total = 0.0
    for s in range(seg_bits.shape[0]):
        bits = seg_bits[s]
        if bits == 0:
            continue
        i = seg_starts[s] >> 6  # (the segment's query word)
        top = bits - 1
        cw = codes[tile, (plane_at[s, top] << _TILE_SHIFT) + lane]
        level_sum = popcount64(cw) << np.uint64(top)
        acc = _plane_dot(cw, query, i, eight) << np.uint64(top)
        lower = rest + plane_at[s, 0]
        for b in range(_MAX_LOWER_PLANES):
            if b < top:
                cw = codes[tile, lower + b]
                level_sum += popcount64(cw) << np.uint64(b)
                acc += _plane_dot(cw, query, i, eight) << np.uint64(b)
        dot = (step * np.float64(np.int64(acc)) + low * np.float64(np.int64(level_sum))
               - seg_mid[s] * seg_sums[s])
        total += _half_ratio(halves, row, s) * dot
    return np.float64(factors[row, 0]) * total


@njit(inline="always")
def _any_segment_score(codes, factors, halves, row, query, step, low, seg_sums, seg_starts,
                       seg_bits, plane_at, seg_mid, n_sign, width):
    """:func:`_segment_score` for segments of any number of words: per word of the segment,
    its sign plane's word from the sign runs, then its lower planes (``words`` apart in the
    row's other words) in the loop of constant length of :func:`_one_word_segment_score`.
    Looping over the planes by the segment's own count, and over the words inside, took 1.4
    to 1.7 times as long (340 against 215 ns a row at 768 dimensions and 4 bits, 300
    against 215 at 1,536)."""
    tile = row >> _TILE_SHIFT
    lane = row & _TILE_MASK
    rest = (n_sign << _TILE_SHIFT) + lane * (width - n_sign) - n_sign  # (word p: at rest + p)
    eight = query.shape[1] == 8
    total = 0.0
    for s in range(seg_bits.shape[0]):
        bits = seg_bits[s]
        if bits == 0:
            continue
        first = seg_starts[s] >> 6
        words = (seg_starts[s + 1] - seg_starts[s] + 63) >> 6
        top = bits - 1
        sign_at = plane_at[s, top]
        lower = rest + plane_at[s, 0]
        acc = np.uint64(0)
        level_sum = np.uint64(0)
        for w in range(words):
            cw = codes[tile, ((sign_at + w) << _TILE_SHIFT) + lane]
            level_sum += popcount64(cw) << np.uint64(top)
            acc += _plane_dot(cw, query, first + w, eight) << np.uint64(top)
            for b in range(_MAX_LOWER_PLANES):
                if b < top:
                    cw = codes[tile, lower + b * words + w]
                    level_sum += popcount64(cw) << np.uint64(b)
                    acc += _plane_dot(cw, query, first + w, eight) << np.uint64(b)
        # (through int64: converting a uint64 to float takes several instructions on x86)
        dot = (step * np.float64(np.int64(acc)) + low * np.float64(np.int64(level_sum))
               - seg_mid[s] * seg_sums[s])
        total += _half_ratio(halves, row, s) * dot
    return np.float64(factors[row, 0]) * total


@njit(inline="always")
def _sign_dot(cw, sign_query, i):
    """sum_j popcount(cw & sign_query[i, j]) << j for the 4-bit sign-pass query."""
    return (popcount64(cw & sign_query[i, 0])
            + (popcount64(cw & sign_query[i, 1]) << np.uint64(1))
            + (popcount64(cw & sign_query[i, 2]) << np.uint64(2))
            + (popcount64(cw & sign_query[i, 3]) << np.uint64(3)))


#: tiles ahead of the 1-bit pass whose sign words and factors are prefetched: at 1M rows (out
#: of cache) 1 and 2 took the pass from 6.4 to 5.0 / 4.8 ms; in cache it changes nothing
_PREFETCH_TILES = 2


@njit(inline="always")
def _prefetch_tile(codes, factors, tile, n_sign):
    """Prefetch the sign words and factors of ``tile`` (if it exists)."""
    if tile >= codes.shape[0]:
        return
    for at in range(0, n_sign << _TILE_SHIFT, 8):  # 8 words: one 64-byte line
        _prefetch(codes, tile, at)
    first = tile << _TILE_SHIFT
    last = min(first + TILE_ROWS, factors.shape[0]) - 1
    step = max(1, 64 // (4 * factors.shape[1]))  # rows per line of float32 factors
    for row in range(first, last + 1, step):
        _prefetch(factors, row, 0)


@njit(inline="always")
def _prefetch_lanes(codes, factors, start, stop, n_sign):
    """Prefetch the sign words and factors of rows ``start .. stop`` of one tile: the part
    of a tile a list of a partitioned index holds (the next list's first rows, or the last
    rows of this one), where a whole tile's prefetch would mostly fetch other lists."""
    if stop <= start:  # (an empty span: nothing to fetch, and its tile may lie past the end)
        return
    tile = start >> _TILE_SHIFT
    lo = start & _TILE_MASK
    hi = ((stop - 1) & _TILE_MASK) + 1
    for i in range(n_sign):
        for lane in range(lo - lo % 8, hi, 8):
            _prefetch(codes, tile, (i << _TILE_SHIFT) + lane)
    step = max(1, 64 // (4 * factors.shape[1]))
    for row in range(start - start % step, stop, step):
        _prefetch(factors, row, 0)


#: candidates ahead of the one being scored in full whose cache lines are prefetched
_PREFETCH_ROWS = 6


@njit(inline="always")
def _prefetch_row(codes, factors, row, n_sign, width):
    """Prefetch every cache line a full score of ``row`` reads (tiled layout): its sign words
    (one line per word: they lie in runs of ``TILE_ROWS``), the rest of its words and its
    factors."""
    tile = row >> _TILE_SHIFT
    lane = row & _TILE_MASK
    for i in range(n_sign):
        _prefetch(codes, tile, (i << _TILE_SHIFT) + lane)
    first = (n_sign << _TILE_SHIFT) + lane * (width - n_sign)
    last = first + width - n_sign - 1
    for at in range(first, last, 8):
        _prefetch(codes, tile, at)
    _prefetch(codes, tile, last)
    _prefetch(factors, row, 0)


#: sign words the 1-bit pass adds to each lane's sums per pass over a tile (all six of a
#: 384-d row): a lane's sums are then read and written once per six words, not once per word
_SIGN_WORDS_PER_PASS = 6


#: lanes the 1-bit pass rounds a tile's run of candidates out to (one 512-bit vector of words)
_LANE_ALIGN = 8


@njit(inline="always")
def _tile_sign_sums(codes, tile, sign_query, acc, ones, lo, hi):
    """Sign-plane sums of lanes ``lo .. hi`` of ``tile``: ``acc`` (query-weighted) and
    ``ones`` (set bits). Each sign word is a run of TILE_ROWS words, one per lane: a
    vectorised loop over the lanes reads ``_SIGN_WORDS_PER_PASS`` runs at once (then any left
    over one at a time). Only the lanes asked for are summed (rounded out to whole vectors):
    a list of a partitioned index starts and ends inside tiles, and summing whole tiles cost
    its 1-bit pass 1.6 times the work on 390-row lists."""
    n_sign = sign_query.shape[0]
    done = n_sign - n_sign % _SIGN_WORDS_PER_PASS
    lo = lo - lo % _LANE_ALIGN
    hi = min(TILE_ROWS, hi + (-hi) % _LANE_ALIGN)
    for lane in range(lo, hi):
        acc[lane] = 0
        ones[lane] = 0
    for i in range(0, done, _SIGN_WORDS_PER_PASS):
        _add_sign_words(codes, tile, sign_query, i, _SIGN_WORDS_PER_PASS, acc, ones, lo, hi)
    for i in range(done, n_sign):
        _add_sign_words(codes, tile, sign_query, i, 1, acc, ones, lo, hi)


@njit(inline="always")
def _add_sign_words(codes, tile, sign_query, first, words, acc, ones, lo, hi):
    """Add sign words ``first .. first + words`` of lanes ``lo .. hi`` of ``tile`` to their
    sums (a constant ``words``, so the compiler unrolls them and vectorises over the lanes)."""
    for lane in range(lo, hi):
        weighted = np.uint64(0)
        set_bits = np.uint64(0)
        for i in range(first, first + words):
            cw = codes[tile, (i << _TILE_SHIFT) + lane]
            set_bits += popcount64(cw)
            weighted += _sign_dot(cw, sign_query, i)
        acc[lane] += weighted
        ones[lane] += set_bits


@njit(inline="always", fastmath=_VECTORISE)
def _sign_upper(factor, weighted, set_bits, sign_step, sign_low, half_sum, bound):
    """A row's upper bound of <r, q> from its sign-plane sums (``weighted``, ``set_bits``)
    and its factor: the 1-bit estimate plus ``bound`` standard errors scaled by the factor.
    (The sums go to float through int64: a uint64 to float takes several instructions.)"""
    factor = np.float64(factor)
    estimate = factor * (sign_step * np.float64(np.int64(weighted))
                         + sign_low * np.float64(np.int64(set_bits)) - half_sum)
    return estimate + abs(factor) * bound


@njit(inline="always", fastmath=_VECTORISE)
def _sign_bounds(codes, factors, rows, use_rows, start, count, sign_query, sign_step,
                 sign_low, sign_sum, bound, metric_l2, l2_col, q_const, acc, ones, out, at):
    """Upper bounds of the scores of ``count`` candidates from ``start`` (within one tile
    unless ``use_rows``) into ``out[at:at + count]``: each row's 1-bit estimate of <r, q>
    from its sign planes (the top plane of each coded segment) against the 4-bit query
    ``sign_query`` (words, 4) that was weighted by each segment's typical scale, plus
    ``bound`` standard errors scaled by the row's factor, turned into a score.

    For candidates within a tile the per-row arithmetic is one loop over consecutive rows
    per metric, which the compiler vectorises (with the row looked up and the metric tested
    inside, as ``_row_at`` and ``_finish`` do, the pass alone took 10.1 against 6.9 ns a
    row; within a whole scan the difference is about 1%). Only the lanes of the candidates
    are summed, except that a whole tile takes the loop of constant bounds: a variable
    range cost a flat scan's 1-bit pass about 20%, while on 390-row lists the range saves
    more than that (``_tile_sign_sums``)."""
    n_sign = sign_query.shape[0]
    half_sum = 0.5 * sign_sum
    if use_rows:
        for j in range(count):
            row = rows[start + j]
            weighted = np.uint64(0)
            set_bits = np.uint64(0)
            for i in range(n_sign):
                cw = _code_word(codes, row, i, n_sign, codes.shape[1] >> _TILE_SHIFT)
                set_bits += popcount64(cw)
                weighted += _sign_dot(cw, sign_query, i)
            ip = _sign_upper(factors[row, 0], weighted, set_bits, sign_step, sign_low,
                             half_sum, bound)
            out[at + j] = _finish(ip, factors, row, metric_l2, l2_col, q_const)
        return
    tile = start >> _TILE_SHIFT
    first = start & _TILE_MASK
    if count == TILE_ROWS:  # (constant bounds: the compiler's best loop for a whole tile)
        _tile_sign_sums(codes, tile, sign_query, acc, ones, 0, TILE_ROWS)
    else:
        _tile_sign_sums(codes, tile, sign_query, acc, ones, first, first + count)
    # (one loop per metric, each passing _finish a constant, so neither tests it per row)
    if metric_l2:
        for j in range(count):
            ip = _sign_upper(factors[start + j, 0], acc[first + j], ones[first + j],
                             sign_step, sign_low, half_sum, bound)
            out[at + j] = _finish(ip, factors, start + j, True, l2_col, q_const)
    else:
        for j in range(count):
            ip = _sign_upper(factors[start + j, 0], acc[first + j], ones[first + j],
                             sign_step, sign_low, half_sum, bound)
            out[at + j] = _finish(ip, factors, start + j, False, l2_col, q_const)


@njit(cache=True, nogil=True)
def prepare_queries(rotated, seg_starts, dim_weight, coded_dims, sign_query_words, dither,
                    query_bits, words, sign_sigma, rounding_scale, epsilon):
    """Everything a segment scan needs of rotated queries (q, dim) float32, in one call (as
    numpy steps it cost a single query about 25 us): ``(planes, step, low)`` of the queries
    quantized to ``query_bits`` (see ``planes.quantize_planes``), the per-segment sums
    (q, S), the sign pass's query: the queries weighted per dimension by ``dim_weight``,
    quantized to 4 dithered bits, its planes gathered at ``sign_query_words`` (the order of
    the rows' sign words), step, low and sum, and each query's prune margin: ``epsilon``
    standard errors of a sign-plane estimate, where the code's error (``sign_sigma`` times
    the query's norm over the coded dimensions) and the query's rounding error (half a step
    times ``rounding_scale``) add their variances."""
    n, dim = rotated.shape
    planes, step, low = quantize_planes(rotated, query_bits, words, dither, False)
    n_seg = seg_starts.shape[0] - 1
    seg_sums = np.zeros((n, n_seg), dtype=np.float64)
    weighted = np.empty((n, dim), dtype=np.float64)
    sign_sum = np.zeros(n, dtype=np.float64)
    coded_sq = np.zeros(n, dtype=np.float64)
    for r in range(n):
        for s in range(n_seg):
            total = 0.0
            for i in range(seg_starts[s], seg_starts[s + 1]):
                total += np.float64(rotated[r, i])
            seg_sums[r, s] = total
        for i in range(dim):
            value = np.float64(rotated[r, i])
            weighted[r, i] = value * dim_weight[i]
            sign_sum[r] += weighted[r, i]
            if coded_dims[i]:
                coded_sq[r] += value * value
    all_planes, sign_step, sign_low = quantize_planes(weighted, 4, words, dither, True)
    sign_planes = np.empty((n, sign_query_words.shape[0], 4), dtype=np.uint64)
    bound = np.empty(n, dtype=np.float64)
    for r in range(n):
        for i in range(sign_query_words.shape[0]):
            for j in range(4):
                sign_planes[r, i, j] = all_planes[r, sign_query_words[i], j]
        rounding = 0.5 * sign_step[r] * rounding_scale
        bound[r] = epsilon * np.sqrt(sign_sigma * sign_sigma * coded_sq[r] + rounding * rounding)
    return planes, step, low, seg_sums, sign_planes, sign_step, sign_low, sign_sum, bound


#: rows whose sign-plane upper bounds one segment scan holds at a time (see scan_segments_task)
_PLACE_BITS = 16
_WINDOW = 1 << _PLACE_BITS  # (a seed keeps its place in the window in the low bits)
_PLACE_MASK = _WINDOW - 1
#: rows scored first, per wanted candidate: with 2 the heap starts near its final state (on
#: the benchmark, in a numpy simulation, 1 / 2 / 4 / 8 scored 1083 / 413 / 395 / 435 rows)
_SEEDS_PER_HIT = 2


#: rows a scan picks for a full score before it scores them (prefetching ahead as it goes)
_PICK_BATCH = TILE_ROWS


@njit(inline="always")
def _score_picks(codes, factors, halves, picks, pick_upper, n_picks, query, step, low,
                 seg_sums, seg_starts, seg_bits, plane_at, seg_mid, n_sign, width, metric_l2,
                 l2_col, const, heap_s, heap_r, size):
    """Full scores of rows ``picks[:n_picks]`` into the heap, each while its upper bound
    ``pick_upper[i]`` still beats the heap, the lines of the rows ``_PREFETCH_ROWS`` ahead
    prefetched: picked rows lie apart, so each would otherwise wait for its own cache lines."""
    capacity = heap_s.shape[0]
    for i in range(min(n_picks, _PREFETCH_ROWS)):
        _prefetch_row(codes, factors, picks[i], n_sign, width)
    for i in range(n_picks):
        if i + _PREFETCH_ROWS < n_picks:
            _prefetch_row(codes, factors, picks[i + _PREFETCH_ROWS], n_sign, width)
        if size == capacity and pick_upper[i] <= heap_s[0]:
            continue
        row = picks[i]
        ip = _segment_score(codes, factors, halves, row, query, step, low, seg_sums, seg_starts,
                            seg_bits, plane_at, seg_mid, n_sign, width)
        size = _heap_offer(heap_s, heap_r, size,
                           _finish(ip, factors, row, metric_l2, l2_col, const), row)
    return size


@njit(cache=True, nogil=True)
def scan_segments_task(codes, factors, removed, check_removed, mask, check_mask, rows, use_rows,
                       spans, span_lo, span_hi, q, halves, qplanes, q_step, q_low, q_seg_sums,
                       q_const, seg_starts, seg_bits, plane_at, seg_mid, metric_l2, l2_col, prune,
                       sign_planes, sign_step, sign_low, sign_sum, q_bound, heap_s, heap_r):
    """Segment codes in tiles (see :func:`write_tiles`) against query ``q`` of (q, words,
    query_bits) planes, into the heap ``heap_s`` / ``heap_r`` as given (empty, or holding an
    earlier scan's best: see ``heap._heap_size``).

    Without ``prune`` every allowed row gets the full estimate. With it, every row is first
    bounded from above by its sign planes (a 1-bit code whose factor is column 0, scanned
    against a 4-bit query weighted by the segments' scales, plus ``q_bound[q]`` standard
    errors), and only rows whose bound beats the heap are scored in full. Early in a scan the
    heap is weak, so while it is not full the rows go by windows of ``_WINDOW``: the whole
    window is bounded, the ``2 K`` rows with the highest bounds are scored first, which fills
    the heap with near-final scores, and then the window's other rows that still beat it.
    (Scoring every row that beats the heap as it stands scored about twice as many rows on
    the benchmark; later windows do exactly that, as the heap is then near-final.) A window
    runs across spans: scanning 32 lists of 1,024 rows then seeds from all of them at once,
    as a flat scan of the same rows would, rather than from the first list alone.
    """
    size = _heap_size(heap_r)
    capacity = heap_s.shape[0]
    query = qplanes[q]
    step, low, const = q_step[q], q_low[q], q_const[q]
    seg_sums = q_seg_sums[q]
    n_sign = sign_planes.shape[1]
    width = codes.shape[1] >> _TILE_SHIFT
    if not prune:
        for span in range(span_lo, span_hi):
            for item in range(spans[span, 0], spans[span, 1]):
                row = _row_at(item, rows, use_rows)
                if check_removed and removed[row]:
                    continue
                if check_mask and not mask[row]:
                    continue
                ip = _segment_score(codes, factors, halves, row, query, step, low, seg_sums,
                                    seg_starts, seg_bits, plane_at, seg_mid, n_sign, width)
                size = _heap_offer(heap_s, heap_r, size,
                                   _finish(ip, factors, row, metric_l2, l2_col, const), row)
        return
    sign_query = sign_planes[q]
    bound = q_bound[q]
    total = 0
    for span in range(span_lo, span_hi):
        total += spans[span, 1] - spans[span, 0]
    upper = np.empty(min(_WINDOW, total), dtype=np.float64)
    n_seeds = _SEEDS_PER_HIT * capacity
    seed_s = np.empty(n_seeds, dtype=np.float32)
    seed_r = np.empty(n_seeds, dtype=np.int64)
    acc = np.empty(TILE_ROWS, dtype=np.uint64)
    ones = np.empty(TILE_ROWS, dtype=np.uint64)
    picks = np.empty(max(n_seeds, _PICK_BATCH), dtype=np.int64)
    pick_upper = np.empty(picks.shape[0], dtype=np.float64)
    span = span_lo
    item = spans[span_lo, 0] if span_lo < span_hi else 0
    while span < span_hi:
        # a window: the next _WINDOW items, across as many spans as it takes. Until the heap is
        # full, bound the whole window first and seed the heap with the best bounds; once it
        # is full, score a row as soon as its bound beats the heap
        seeding = size < capacity
        window_span, window_item = span, item
        _heap_init(seed_s, seed_r)
        seeds = 0
        filled = 0
        while filled < _WINDOW and span < span_hi:
            end = min(spans[span, 1], item + _WINDOW - filled)
            # (prefetching: the next span's first rows as a span begins, and within a span
            # the rows _PREFETCH_TILES tiles ahead. On 390-row lists this took a query's scan
            # of 16 or 64 lists 4-8% faster than prefetching two whole tiles ahead always)
            if not use_rows and item == spans[span, 0] and span + 1 < span_hi:
                nxt = spans[span + 1, 0]
                _prefetch_lanes(codes, factors, nxt,
                                min(spans[span + 1, 1], (nxt | _TILE_MASK) + 1), n_sign)
            block = item
            while block < end:
                count = min(end, (block | _TILE_MASK) + 1) - block  # up to the end of the tile
                if not use_rows:
                    ahead = (block >> _TILE_SHIFT) + _PREFETCH_TILES
                    if (ahead + 1) << _TILE_SHIFT <= end:
                        _prefetch_tile(codes, factors, ahead, n_sign)
                    elif ahead << _TILE_SHIFT < end:
                        _prefetch_lanes(codes, factors, ahead << _TILE_SHIFT, end, n_sign)
                place = filled + block - item  # (of the tile's first candidate in the window)
                _sign_bounds(codes, factors, rows, use_rows, block, count, sign_query,
                             sign_step[q], sign_low[q], sign_sum[q], bound, metric_l2, l2_col,
                             const, acc, ones, upper, place)
                if check_removed or check_mask:
                    for j in range(count):
                        row = _row_at(block + j, rows, use_rows)
                        # (two plain ifs: a helper function here slows the whole scan ten-fold)
                        if check_removed and removed[row]:
                            upper[place + j] = -np.inf
                        if check_mask and not mask[row]:
                            upper[place + j] = -np.inf
                if seeding:
                    for j in range(count):
                        ub = upper[place + j]
                        # (a heap's root is its minimum only once it is full)
                        if ub != -np.inf and (seeds < n_seeds or ub > seed_s[0]):
                            seeds = _heap_offer(seed_s, seed_r, seeds, ub,
                                                ((block + j) << _PLACE_BITS) | (place + j))
                else:
                    n_picks = 0
                    for j in range(count):
                        if upper[place + j] > heap_s[0]:
                            picks[n_picks] = _row_at(block + j, rows, use_rows)
                            pick_upper[n_picks] = upper[place + j]
                            n_picks += 1
                    size = _score_picks(codes, factors, halves, picks, pick_upper, n_picks,
                                        query, step, low, seg_sums, seg_starts, seg_bits,
                                        plane_at, seg_mid, n_sign, width, metric_l2, l2_col,
                                        const, heap_s, heap_r, size)
                block += count
            filled += end - item
            item = end
            if item >= spans[span, 1]:
                span += 1
                if span < span_hi:
                    item = spans[span, 0]
        if not seeding:
            continue
        # the seeds in full: the heap is then close to final
        for i in range(seeds):
            at = seed_r[i] & _PLACE_MASK
            picks[i] = _row_at(seed_r[i] >> _PLACE_BITS, rows, use_rows)
            pick_upper[i] = upper[at]
            upper[at] = -np.inf
        size = _score_picks(codes, factors, halves, picks, pick_upper, seeds, query, step, low,
                            seg_sums, seg_starts, seg_bits, plane_at, seg_mid, n_sign, width,
                            metric_l2, l2_col, const, heap_s, heap_r, size)
        # the window's other rows whose bound beats the heap, a batch at a time (its items
        # walked again from the window's first span)
        n_picks = 0
        at = 0
        span_at, first_item = window_span, window_item
        while at < filled:
            stop = min(spans[span_at, 1], first_item + filled - at)
            for place_item in range(first_item, stop):
                ub = upper[at]
                at += 1
                if ub == -np.inf or (size == capacity and ub <= heap_s[0]):
                    continue
                picks[n_picks] = _row_at(place_item, rows, use_rows)
                pick_upper[n_picks] = ub
                n_picks += 1
                if n_picks == picks.shape[0]:
                    size = _score_picks(codes, factors, halves, picks, pick_upper, n_picks,
                                        query, step, low, seg_sums, seg_starts, seg_bits,
                                        plane_at, seg_mid, n_sign, width, metric_l2, l2_col,
                                        const, heap_s, heap_r, size)
                    n_picks = 0
            span_at += 1
            if span_at < span_hi:
                first_item = spans[span_at, 0]
        size = _score_picks(codes, factors, halves, picks, pick_upper, n_picks, query, step,
                            low, seg_sums, seg_starts, seg_bits, plane_at, seg_mid, n_sign, width,
                            metric_l2, l2_col, const, heap_s, heap_r, size)


@njit(cache=True, nogil=True, parallel=True)
def scan_segments_parallel(codes, factors, removed, check_removed, mask, check_mask, rows, use_rows,
                           spans, span_offsets, halves, qplanes, q_step, q_low, q_seg_sums,
                           q_const, seg_starts, seg_bits, plane_at, seg_mid, metric_l2, l2_col,
                           prune, sign_planes, sign_step, sign_low, sign_sum, q_bound, out_scores,
                           out_rows):
    n_queries, n_chunks, _ = out_scores.shape
    for task in prange(n_queries * n_chunks):
        q, chunk = task // n_chunks, task % n_chunks
        _heap_init(out_scores[q, chunk], out_rows[q, chunk])  # (the task continues a heap)
        scan_segments_task(codes, factors, removed, check_removed, mask, check_mask, rows, use_rows,
                           spans, span_offsets[task], span_offsets[task + 1], q, halves, qplanes,
                           q_step, q_low, q_seg_sums, q_const, seg_starts, seg_bits, plane_at,
                           seg_mid, metric_l2, l2_col, prune, sign_planes, sign_step, sign_low,
                           sign_sum, q_bound, out_scores[q, chunk], out_rows[q, chunk])
