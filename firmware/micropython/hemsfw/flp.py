# Range-verified plans: a fully linear proof (FLP) that every frame of a home's plan lies in
# [0, cap], checked jointly by the coordinator and the mask broker(s) without either learning it.
#
# The construction is draft-irtf-cfrg-vdaf's FLP (BBCGGI19, "flp_bbcggi19") over its Field128,
# with a Prio3SumVec-style circuit (one ParallelSum(Mul) gadget over bit entries) plus a linear
# term tying the bits to the shares the verifiers already hold: the coordinator's masked plan
# M = p + sum_b m_b (mod 2^32) and each mask broker's mask m_b.  docs/integrity.md has the
# construction, the soundness and privacy argument, the cost and where we depart from the draft.
#
# Measurement (per frame k, `per` field elements, each 0 or 1):
#   value bits  x_{k,0..nv-1}  with weights range_weights(cap): sum c_j x_j is exactly [0, cap]
#   wrap bits   w_{k,0..nw-1}  with weights range_weights(B): the carries of the mod-2^32 sum,
#                              in [0, B] for B mask brokers
# Linear check per frame:  (M_k - sum_b m_{b,k}) + 2^32 * sum w - sum c_j x_j = 0  in the field.
# Every quantity is an integer below 2^36 in absolute value, far below the modulus, so the field
# equation is an integer equation: (M_k - sum m_b) mod 2^32 equals a value in [0, cap].
#
# Shares: broker b (party b+1) derives its share of (bits || proof) from the mask seed it already
# receives (XOF with a separate domain); the coordinator (party 0) receives the rest in the plan
# report.  The share of "M - sum m_b" is M for the coordinator and -m_b for broker b: nothing new
# is sent for it.
#
# Sans-I/O, MicroPython subset.  Field elements are Python ints (big ints on a board: 128 bits);
# the prover keeps only O(P) of them alive (wire values are recomputed from the bits), so its
# heap stays a few KB besides the output share.

import hashlib

if False:  # types for mypy only (docs/firmware.md, "Types")
    from collections.abc import Sequence

    from hemsfw.interfaces import Json, Slot

MODULUS = 340282366920938462946865773367900766209   # Field128 of draft-irtf-cfrg-vdaf
ENC = 16                                            # bytes per encoded element (little-endian)
GEN_ORDER_LOG = 66                                  # GEN has order 2^66
GEN = 7                                             # raised below to (MODULUS - 1) / 2^66
TWO32 = 4294967296

D_SHARE = b"hems/v1 flp share"
D_PROVE = b"hems/v1 flp prove"
D_PART = b"hems/v1 flp part"
D_JR = b"hems/v1 flp joint"
D_QUERY = b"hems/v1 flp query"
SEED_LEN = 32


def _pow(x: int, e: int) -> int:
    r = 1
    x %= MODULUS
    while e:
        if e & 1:
            r = r * x % MODULUS
        x = x * x % MODULUS
        e >>= 1
    return r


def inv(x: int) -> int:
    if x % MODULUS == 0:
        raise ValueError("inverse of zero")
    return _pow(x, MODULUS - 2)


_GEN = _pow(GEN, (MODULUS - 1) >> GEN_ORDER_LOG)


_ROOTS: "dict[int, tuple[int, int, int]]" = {}


def _roots(n: int) -> tuple[int, int, int]:
    """(w, 1/w, 1/n) for the primitive n-th root w = GEN^(2^66/n), n a power of two <= 2^66."""
    got = _ROOTS.get(n)
    if got is None:
        w = _GEN
        m = 1 << GEN_ORDER_LOG
        while m > n:
            w = w * w % MODULUS
            m >>= 1
        if m != n:
            raise ValueError("n must be a power of two")
        got = (w, inv(w), inv(n))
        _ROOTS[n] = got
    return got


def root(n: int) -> int:
    """A primitive n-th root of unity, n a power of two up to 2^66 (the draft's GEN^(2^66/n))."""
    return _roots(n)[0]


def ntt(a: list[int], w: int) -> list[int]:
    """In place: a[k] <- sum_i a[i] w^(ik), len(a) a power of two, w a primitive len(a)-th root."""
    n = len(a)
    j = 0
    for i in range(1, n):
        bit = n >> 1
        while j & bit:
            j ^= bit
            bit >>= 1
        j |= bit
        if i < j:
            a[i], a[j] = a[j], a[i]
    m = 2
    while m <= n:
        wm = w
        q = n // m
        while q > 1:
            wm = wm * wm % MODULUS
            q >>= 1
        h = m >> 1
        for k in range(0, n, m):
            x = 1
            for t in range(k, k + h):
                u = a[t]
                v = a[t + h] * x % MODULUS
                a[t] = (u + v) % MODULUS
                a[t + h] = (u - v) % MODULUS
                x = x * wm % MODULUS
        m <<= 1
    return a


def intt(a: list[int], w: int) -> list[int]:
    """In place inverse of ntt(a, w): values at w^k -> coefficients."""
    n = len(a)
    rw, wi, ni = _roots(n)
    ntt(a, wi if rw == w else inv(w))
    for i in range(len(a)):
        a[i] = a[i] * ni % MODULUS
    return a


def horner(coeffs: "Sequence[int]", x: int) -> int:
    acc = 0
    for i in range(len(coeffs) - 1, -1, -1):
        acc = (acc * x + coeffs[i]) % MODULUS
    return acc


def range_weights(bound: int) -> list[int]:
    """Bit weights whose 0/1 combinations are exactly the integers 0..bound (bound >= 0):
    1, 2, ..., 2^(n-2), bound - (2^(n-1) - 1) with n = bit length of bound."""
    if bound < 0:
        raise ValueError("bound")
    n = 0
    while (1 << n) <= bound:
        n += 1
    out = []
    for j in range(n - 1):
        out.append(1 << j)
    if n:
        out.append(bound - ((1 << (n - 1)) - 1))
    return out


def bits_of(v: int, weights: "Sequence[int]") -> list[int]:
    """0/1 list b with sum b_j weights_j == v (greedy from the top weight; v in 0..sum)."""
    out = [0] * len(weights)
    for j in range(len(weights) - 1, -1, -1):
        if v >= weights[j]:
            out[j] = 1
            v -= weights[j]
    if v:
        raise ValueError("value out of range")
    return out


class Circuit:
    """Public parameters of one home's proof: frames, cap (in the round's quanta) and the number
    of mask brokers B.  Both sides derive every length from these three numbers."""

    def __init__(self, frames: int, cap: int, brokers: int) -> None:
        if frames < 1 or cap < 0 or cap >= (1 << 30) or brokers < 1 or brokers > 8:
            raise ValueError("bad circuit parameters")
        self.frames = frames
        self.cap = cap
        self.brokers = brokers
        self.shares = brokers + 1
        self.vw = range_weights(cap)
        self.ww = range_weights(brokers)
        self.per = len(self.vw) + len(self.ww)
        self.meas_len = frames * self.per
        # chunk length: the smallest proof (2*chunk wire seeds + 2P - 1 gadget coefficients)
        best = 0
        for c in range(1, self.meas_len + 1):
            calls = (self.meas_len + c - 1) // c
            p = 1
            while p < calls + 1:
                p <<= 1
            size = 2 * c + 2 * p - 1
            if not best or size < best:
                best = size
                self.chunk = c
                self.calls = calls
                self.p = p
        self.arity = 2 * self.chunk
        self.proof_len = self.arity + 2 * self.p - 1
        self.share_len = self.meas_len + self.proof_len
        self.verifier_len = self.arity + 2

    def encode(self, plan: "Sequence[int]", wraps: "Sequence[int]") -> bytearray:
        """The measurement: 0/1 bytes, frame by frame (value bits, then wrap bits)."""
        out = bytearray(self.meas_len)
        for k in range(self.frames):
            b = bits_of(plan[k], self.vw) + bits_of(wraps[k], self.ww)
            for j in range(self.per):
                out[k * self.per + j] = b[j]
        return out


class Xof:
    """SHA-256 in counter mode (as hemsfw.masking.expand_seed): block i = SHA-256(domain | seed |
    i as 4-byte LE); field elements by rejection sampling of 16-byte little-endian integers."""

    def __init__(self, domain: bytes, seed: bytes) -> None:
        self.pre = domain + seed
        self.ctr = 0
        self.buf = b""
        self.pos = 0

    def read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            if self.pos >= len(self.buf):
                c = self.ctr
                h = hashlib.sha256(self.pre)
                h.update(bytes((c & 0xFF, (c >> 8) & 0xFF, (c >> 16) & 0xFF, (c >> 24) & 0xFF)))
                self.buf = h.digest()
                self.pos = 0
                self.ctr += 1
            take = min(n - len(out), len(self.buf) - self.pos)
            out += self.buf[self.pos:self.pos + take]
            self.pos += take
        return out

    def elem(self) -> int:
        while True:
            x = int.from_bytes(self.read(ENC), "little")
            if x < MODULUS:
                return x


def nonce(home: str, day: str, rnd: int, report_id: str) -> bytes:
    """Binds a proof to one report: parts and query randomness hash it."""
    return ("%s|%s|%d|%s" % (home, day, rnd, report_id)).encode()


def helper_part(party: int, nonce_: bytes, seed: bytes) -> bytes:
    """Joint-randomness part of mask broker `party` (1..B): a PRF of its secret seed."""
    h = hashlib.sha256(D_PART)
    h.update(bytes((party,)))
    h.update(nonce_)
    h.update(seed)
    return h.digest()


def leader_part(nonce_: bytes, blind: bytes, meas_share: "bytes | bytearray | memoryview",
                masked: bytes | bytearray) -> bytes:
    """Joint-randomness part of the coordinator (party 0): hashes its measurement share and its
    share of the plan (the masked plan), hidden by the home's random blind."""
    h = hashlib.sha256(D_PART)
    h.update(b"\x00")
    h.update(nonce_)
    h.update(blind)
    h.update(meas_share)
    h.update(masked)
    return h.digest()


def joint_rand(parts: "Sequence[bytes]") -> tuple[int, int]:
    """(r, s): r weighs the bit checks, s the per-frame linear checks."""
    h = hashlib.sha256(D_JR)
    for p in parts:
        h.update(p)
    x = Xof(D_JR, h.digest())
    return x.elem(), x.elem()


def query_rand(qseed: bytes, nonce_: bytes, p: int) -> int:
    """The verifiers' evaluation point t, never one of the P interpolation points (t^P != 1)."""
    x = Xof(D_QUERY, qseed + nonce_)
    while True:
        t = x.elem()
        if _pow(t, p) != 1:
            return t


def _words(buf: bytes | bytearray) -> list[int]:
    out = [0] * (len(buf) // 4)
    for k in range(len(out)):
        i = 4 * k
        out[k] = buf[i] | (buf[i + 1] << 8) | (buf[i + 2] << 16) | (buf[i + 3] << 24)
    return out


def wraps(plan: "Sequence[int]", masked: bytes | bytearray,
          masks: "Sequence[bytes | bytearray]") -> list[int]:
    """Per frame: w = (plan + sum_b m_b - M) / 2^32, the carries the field check adds back."""
    mw = _words(masked)
    acc = list(plan)
    for m in masks:
        ws = _words(m)
        for k in range(len(acc)):
            acc[k] += ws[k]
    out = [0] * len(acc)
    for k in range(len(acc)):
        d = acc[k] - mw[k]
        if d % TWO32:
            raise ValueError("masked plan is not plan + masks")
        out[k] = d // TWO32
    return out

# ---------------------------------------------------------------- the circuit, shared by both


def _wire(c: Circuit, meas: "Sequence[int]", seeds: "Sequence[int]", wire: int, r: int,
          num_shares: int) -> list[int]:
    """Values of one gadget wire at the P points: seed, the input of each call, zeros.
    Even wires: r^(idx+1) * x_idx; odd wires: x_idx - 1/num_shares (Prio3SumVec's layout)."""
    out = [0] * c.p
    out[0] = seeds[wire]
    j = wire >> 1
    if wire & 1:
        sub = inv(num_shares)
        for k in range(c.calls):
            idx = k * c.chunk + j
            e = meas[idx] if idx < c.meas_len else 0
            out[k + 1] = (e - sub) % MODULUS
    else:
        x = _pow(r, j + 1)
        rc = _pow(r, c.chunk)
        for k in range(c.calls):
            idx = k * c.chunk + j
            if idx < c.meas_len:
                out[k + 1] = x * meas[idx] % MODULUS
            x = x * rc % MODULUS
    return out


def _linear(c: Circuit, meas: "Sequence[int]", dshare: "Sequence[int]", s: int) -> int:
    """sum_k s^(k+1) * (d_k + 2^32 * sum w - sum c_j x_j): affine-free, so shares add up."""
    acc = 0
    sk = s
    nv = len(c.vw)
    for k in range(c.frames):
        base = k * c.per
        v = dshare[k]
        for j in range(nv):
            v -= c.vw[j] * meas[base + j]
        for j in range(len(c.ww)):
            v += TWO32 * c.ww[j] * meas[base + nv + j]
        acc = (acc + sk * v) % MODULUS
        sk = sk * s % MODULUS
    return acc

# ---------------------------------------------------------------- prover (the home)


def prove(c: Circuit, meas: "Sequence[int]", r: int, prove_seed: bytes) -> list[int]:
    """The proof: arity wire seeds, then the 2P-1 coefficients of the gadget polynomial
    sum_j wire_2j(X) * wire_2j+1(X).  Products are taken on 2P points, one wire pair at a time."""
    px = Xof(D_PROVE, prove_seed)
    seeds = [px.elem() for _ in range(c.arity)]
    p = c.p
    wp = root(p)
    w2 = root(2 * p)
    acc = [0] * (2 * p)
    for j in range(c.chunk):
        a = intt(_wire(c, meas, seeds, 2 * j, r, 1), wp) + [0] * p
        b = intt(_wire(c, meas, seeds, 2 * j + 1, r, 1), wp) + [0] * p
        ntt(a, w2)
        ntt(b, w2)
        for i in range(2 * p):
            acc[i] = (acc[i] + a[i] * b[i]) % MODULUS
    intt(acc, w2)
    if acc[2 * p - 1]:
        raise ValueError("gadget degree")   # cannot happen: degree <= 2(P-1)
    return seeds + acc[:2 * p - 1]


def _put(out: bytearray, i: int, x: int) -> None:
    out[ENC * i:ENC * (i + 1)] = x.to_bytes(ENC, "little")


def prove_report(c: Circuit, plan: "Sequence[int]", masked: bytes | bytearray,
                 seeds: "Sequence[bytes]", masks: "Sequence[bytes | bytearray]",
                 nonce_: bytes, rand: bytes) -> tuple[bytearray, bytes, list[bytes]]:
    """The home's side.  plan: quanta per frame; masked: M (4*frames bytes); seeds/masks: the
    mask seed of each broker (round order) and its expansion; rand: 64 fresh random bytes.
    Returns (coordinator's share: share_len elements, 16 bytes each; blind; helper parts)."""
    if len(plan) != c.frames:
        raise ValueError("bad prover input")
    return share_measurement(c, c.encode(plan, wraps(plan, masked, masks)), masked, seeds,
                             nonce_, rand)


def share_measurement(c: Circuit, meas: "Sequence[int]", masked: bytes | bytearray,
                      seeds: "Sequence[bytes]", nonce_: bytes, rand: bytes
                      ) -> tuple[bytearray, bytes, list[bytes]]:
    """prove_report for an already encoded measurement (any field elements: the attack tests
    share invalid ones through it)."""
    if len(rand) != 2 * SEED_LEN or len(seeds) != c.brokers or len(meas) != c.meas_len:
        raise ValueError("bad prover input")
    blind = bytes(rand[:SEED_LEN])
    helpers = [Xof(D_SHARE, s) for s in seeds]
    out = bytearray(ENC * c.share_len)
    for i in range(c.meas_len):
        v = meas[i]
        for h in helpers:
            v -= h.elem()
        _put(out, i, v % MODULUS)
    parts = [leader_part(nonce_, blind, memoryview(out)[:ENC * c.meas_len], masked)]
    hparts = []
    for b in range(c.brokers):
        hparts.append(helper_part(b + 1, nonce_, seeds[b]))
    r = joint_rand(parts + hparts)[0]
    pf = prove(c, meas, r, bytes(rand[SEED_LEN:]))
    for i in range(c.proof_len):
        v = pf[i]
        for h in helpers:
            v -= h.elem()
        _put(out, c.meas_len + i, v % MODULUS)
    return out, blind, hparts

# ---------------------------------------------------------------- verifiers


def decode_share(c: Circuit, buf: bytes | bytearray) -> tuple[list[int], list[int]]:
    """Coordinator's share bytes -> (measurement share, proof share); ValueError('bad_flp')."""
    out = decode_vec(buf, c.share_len)
    return out[:c.meas_len], out[c.meas_len:]


def helper_share(c: Circuit, seed: bytes) -> tuple[list[int], list[int]]:
    """Broker's share (measurement, proof), expanded from its mask seed."""
    x = Xof(D_SHARE, seed)
    meas = [x.elem() for _ in range(c.meas_len)]
    return meas, [x.elem() for _ in range(c.proof_len)]


def leader_dshare(masked: bytes | bytearray) -> list[int]:
    """The coordinator's share of M - sum m_b: M itself."""
    return _words(masked)


def helper_dshare(mask: bytes | bytearray) -> list[int]:
    """A broker's share of M - sum m_b: -m_b."""
    return [(-w) % MODULUS for w in _words(mask)]


def query(c: Circuit, meas: "Sequence[int]", dshare: "Sequence[int]", proof: "Sequence[int]",
          jr: tuple[int, int], t: int) -> list[int]:
    """One verifier's share of the verifier: [circuit output, wire_j(t) ..., gadget(t)]."""
    r, s = jr
    p = c.p
    seeds = proof[:c.arity]
    g = list(proof[c.arity:]) + [0]
    gv = ntt(list(g), root(2 * p))              # gadget share at the 2P-th roots
    out = 0
    for k in range(c.calls):
        out += gv[2 * (k + 1)]                  # alpha_P^(k+1) = alpha_2P^(2(k+1))
    out = (out + _linear(c, meas, dshare, s)) % MODULUS
    # wire_j(t) = sum_k wire_j[k] * L_k(t), L_k(t) = (t^P - 1) a^k / (P (t - a^k)), a = alpha_P
    a, _, pinv = _roots(p)
    lag = _lagrange_at(p, a, pinv, t)
    sub = inv(c.shares)
    v = [out] + [seeds[i] * lag[0] % MODULUS for i in range(c.arity)]
    rc = _pow(r, c.chunk)
    for j in range(c.chunk):
        x = _pow(r, j + 1)
        ev = 0
        od = 0
        for k in range(c.calls):
            idx = k * c.chunk + j
            e = meas[idx] if idx < c.meas_len else 0
            lk = lag[k + 1]
            ev += x * e % MODULUS * lk
            od += (e - sub) * lk
            x = x * rc % MODULUS
        v[1 + 2 * j] = (v[1 + 2 * j] + ev) % MODULUS
        v[2 + 2 * j] = (v[2 + 2 * j] + od) % MODULUS
    v.append(horner(g, t))
    return v


def _lagrange_at(p: int, a: int, pinv: int, t: int) -> list[int]:
    """The P Lagrange basis values at t for the points a^0..a^(P-1) (one batched inversion)."""
    pts = [1] * p
    for k in range(1, p):
        pts[k] = pts[k - 1] * a % MODULUS
    dif = [(t - x) % MODULUS for x in pts]
    pre = [1] * (p + 1)
    for k in range(p):
        pre[k + 1] = pre[k] * dif[k] % MODULUS
    acc = inv(pre[p])
    invs = [0] * p
    for k in range(p - 1, -1, -1):
        invs[k] = acc * pre[k] % MODULUS
        acc = acc * dif[k] % MODULUS
    f = (_pow(t, p) - 1) * pinv % MODULUS
    return [f * pts[k] % MODULUS * invs[k] % MODULUS for k in range(p)]


def decide(c: Circuit, shares: "Sequence[Sequence[int]]") -> bool:
    """Sum the verifier shares: valid iff the circuit output is 0 and the gadget polynomial
    agrees with ParallelSum(Mul) of the wire polynomials at t."""
    v = [0] * c.verifier_len
    for sh in shares:
        if len(sh) != c.verifier_len:
            return False
        for i in range(c.verifier_len):
            v[i] = (v[i] + sh[i]) % MODULUS
    if v[0]:
        return False
    acc = 0
    for j in range(c.chunk):
        acc = (acc + v[1 + 2 * j] * v[2 + 2 * j]) % MODULUS
    return acc == v[c.verifier_len - 1]


def encode_vec(xs: "Sequence[int]") -> bytearray:
    out = bytearray(ENC * len(xs))
    for i in range(len(xs)):
        _put(out, i, xs[i])
    return out


def decode_vec(buf: bytes | bytearray, n: int) -> list[int]:
    """n encoded elements; ValueError('bad_flp') on a wrong length or a value >= the modulus."""
    if len(buf) != ENC * n:
        raise ValueError("bad_flp")
    out = [0] * n
    for i in range(n):
        x = int.from_bytes(buf[ENC * i:ENC * (i + 1)], "little")
        if x >= MODULUS:
            raise ValueError("bad_flp")
        out[i] = x
    return out


# ---------------------------------------------------------------- the home's report


def home_report(home: str, slot: "Slot", rid: str, rated_w: int, seeds: "Sequence[bytes]",
                rand: bytes) -> "tuple[bytearray, Json]":
    """(masked plan, the plan report's "flp" field) for hemsfw.home: the plan (slot["plan"],
    quanta) is clamped in place to the cap per frame, rated power x frame length in Wh rounded
    up (backend/coordinator/reserve.py HomeCaps.cap_wh) in the round's quanta: the relay cannot
    draw more than its circuit's rating."""
    from hemsfw import masking, protocol

    frames = slot["frames"]
    cap = -(-rated_w * slot["frame_s"] // 3600) // slot["quantum_wh"]
    p = slot["plan"]
    for k in range(frames):
        if p[k] > cap:
            p[k] = cap
    masks = [masking.expand_seed(s, frames) for s in seeds]
    acc = bytearray(4 * frames)
    for m in masks:
        masking.add_words(acc, m)
    masked = masking.add_plan(acc, p)
    del acc
    share, blind, parts = prove_report(Circuit(frames, cap, len(seeds)), p, masked, seeds,
                                       masks, nonce(home, slot["day"], slot["round"], rid), rand)
    return masked, {"share": protocol.b64(share), "blind": protocol.b64(blind),
                    "parts": [protocol.b64(x) for x in parts]}
