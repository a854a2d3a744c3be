"""Synthetic images whose objects are told best by a small part, as on photos.

Every object is a large textured body carrying a small class-specific part (its
"head"). The part is the most telling cue: its colour and shape name the class.
The body's look (colour, texture family, shape) carries weaker evidence of the
class, set by ``body_class_strength``; it is coherent and differs from what
surrounds it. The background is textured noise with clutter of its own kind.
A classifier needs only the part, so its class activation maps peak on the part
and miss most of the body, as on real photos, where CAMs fire on a face rather
than on the whole person: the problem that AffinityNet's random walk solves.

``body_class_strength=0, distractors="bodies"`` is the first generator (bodies
shared by every class, clutter that looks exactly like bodies, parts at the edge),
kept bit for bit as the named hard case.

All sizes below are in pixels at ``image_size=128`` and scale linearly with
the image size (parts keep at least 5 px across).
"""

from numbers import Integral, Real

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions, validate_params

from .._validation import check_random_state_seed, labels_from_masks

__all__ = ["make_shapes"]

#: Largest supported number of classes (as many as PASCAL VOC).
MAX_CLASSES = 20

#: Values of ``distractors``: clutter of the background's own kind, clutter drawn
#: exactly like bodies (the first generator), or none.
DISTRACTORS = ("background", "bodies", None)

#: Default of ``body_class_strength`` (chosen by measurement: docs/benchmarks.md,
#: "make_shapes: choosing body_class_strength").
BODY_CLASS_STRENGTH = 0.25

# --- design constants (documented in make_shapes' docstring) -----------------
_P_EMPTY = 0.05  # probability that an image holds no object at all
_N_DISTRACTORS = 2  # clutter blobs per image (background)
_MAX_TRIES = 20  # placements tried per object before it is dropped

_BODY_SEMI_MAJOR = (13.0, 25.0)  # semi-major axis of a body (26-50 px across)
_BODY_AXIS_RATIO = (0.6, 1.0)  # semi-minor / semi-major, shared by all classes
_BODY_COLOUR = np.array([176.0, 132.0, 84.0], dtype=np.float32)  # tan: the shared body colour
_BODY_JITTER = 18.0  # per-object, per-channel uniform jitter of the body colour
_STRIPE_PERIOD = (5.0, 8.0)  # body texture: stripes (or another family) of this period ...
_STRIPE_AMPLITUDE = 28.0  # ... and amplitude, at a random angle

# Class evidence of bodies (reached at body_class_strength=1; at strength s a body's colour
# is s of the way from tan to its class colour, its texture family is its class's with
# probability s (else stripes), and its axis-ratio range is s of the way to its class's).
_BODY_CLASS_COLOURS = np.array(
    [
        [96, 128, 192],  # slate blue
        [104, 168, 96],  # sage green
        [188, 104, 136],  # dusty rose
        [140, 140, 148],  # grey
        [200, 176, 96],  # ochre
        [88, 160, 168],  # teal
        [152, 112, 184],  # lilac
        [128, 88, 64],  # brown
    ],
    dtype=np.float32,
)
_TEXTURES = ("stripes", "spots", "checks", "rings")  # stripes is the shared family
_CLASS_TEXTURE = (1, 2, 3, 0)  # class j's family: _TEXTURES[_CLASS_TEXTURE[j % 4]]
_CLASS_AXIS_RATIO = ((0.8, 1.0), (0.45, 0.65))  # class j: round (even j) or elongated (odd j)

_P_PART_AT_EDGE = 0.5  # a part sits at the end of the body's major axis, else anywhere inside

_PART_HALF_SIZE = (4.0, 7.0)  # the part is 8-14 px across
_MIN_PART_HALF_SIZE = 2.5

_BG_BASE = (50.0, 200.0)  # per-image, per-channel base colour of the background
_BG_COARSE = (6, 45.0)  # low-frequency colour noise: grid size, amplitude
_BG_FINE = (16, 20.0)  # blotchy texture: grid size (at 128 px), amplitude
_PIXEL_NOISE = 8.0  # standard deviation of the per-pixel noise, everywhere (triangular)
_CLUTTER_SHIFT = 60.0  # background clutter: base colour shifted by up to this per channel ...
_CLUTTER_BLOTCH = 2.0  # ... with the background's blotchy texture at this times its amplitude

# Part of class j: colour _PART_COLOURS[j % 8], shape _PART_SHAPES[j % 5]. As 5 and
# 8 are coprime, the 40 (shape, colour) pairs of classes 0..39 are all distinct,
# and classes 0..4 differ both in colour and in shape.
_PART_COLOURS = np.array(
    [
        [225, 30, 40],  # red
        [40, 75, 235],  # blue
        [40, 195, 60],  # green
        [240, 225, 35],  # yellow
        [215, 40, 205],  # magenta
        [30, 205, 215],  # cyan
        [248, 248, 248],  # white
        [18, 18, 18],  # black
    ],
    dtype=np.float32,
)
_PART_SHAPES = ("disc", "square", "triangle", "cross", "ring")


def part_style(class_index):
    """Return ``(shape name, RGB colour)`` of the part that marks class column ``class_index``."""
    return (
        _PART_SHAPES[class_index % len(_PART_SHAPES)],
        tuple(int(c) for c in _PART_COLOURS[class_index % len(_PART_COLOURS)]),
    )


def _part_footprint(shape, u, v):
    """Boolean footprint of a part shape; ``u``, ``v`` are offsets in units of its half-size."""
    if shape == "disc":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape == "triangle":  # apex up (image rows grow downwards)
        return (v >= -1.0) & (v <= 0.75) & (np.abs(u) <= 0.55 * (v + 1.0))
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.34) & (av <= 1.0)) | ((av <= 0.34) & (au <= 1.0))
    if shape == "ring":
        rr = u * u + v * v
        return (rr >= 0.3) & (rr <= 1.0)
    raise ValueError(f"unknown part shape {shape!r}")  # pragma: no cover


def _interp_matrix(n_in, n_out):
    """(n_out, n_in) matrix of linear interpolation from a coarse to a fine 1-D grid."""
    t = np.linspace(0.0, n_in - 1.0, n_out)
    i0 = np.minimum(np.floor(t).astype(int), n_in - 2)
    w = (t - i0).astype(np.float32)
    m = np.zeros((n_out, n_in), dtype=np.float32)
    rows = np.arange(n_out)
    m[rows, i0] = 1.0 - w
    m[rows, i0 + 1] = w
    return m


def body_style(class_index, strength):
    """Look of the bodies of class column ``class_index`` at ``body_class_strength``.

    Returns ``(colour, texture, p_texture, axis_ratio)``: the mean RGB colour (float32),
    the class's texture family, the probability that a body shows that family (else
    stripes, the shared family) and the ``(low, high)`` range of its axis ratio. At
    strength 0 every class gets the shared look (tan, stripes, 0.6-1).
    """
    s = float(strength)
    colour = _BODY_COLOUR + np.float32(s) * (_BODY_CLASS_COLOURS[class_index % len(_BODY_CLASS_COLOURS)]
                                             - _BODY_COLOUR)
    texture = _TEXTURES[_CLASS_TEXTURE[class_index % len(_CLASS_TEXTURE)]]
    lo, hi = _CLASS_AXIS_RATIO[class_index % len(_CLASS_AXIS_RATIO)]
    ratio = (_BODY_AXIS_RATIO[0] + s * (lo - _BODY_AXIS_RATIO[0]),
             _BODY_AXIS_RATIO[1] + s * (hi - _BODY_AXIS_RATIO[1]))
    return colour.astype(np.float32), texture, s, ratio


def _texture(family, along, across, radius, period, phase):
    """Zero-mean texture in [-1, 1] of one family over a body's pixels (see body_style)."""
    k = 2.0 * np.pi / period
    if family == "stripes":
        return np.sin(along * k + phase)
    if family == "checks":  # soft squares
        return np.tanh(3.0 * np.sin(along * k + phase) * np.sin(across * k + 2.0 * phase))
    if family == "spots":  # round dots on a plain ground
        dots = np.sin(along * k + phase) * np.sin(across * k + 2.0 * phase) > 0.45
        return np.where(dots, 1.0, -0.35).astype(np.float32)
    if family == "rings":  # concentric about the body's centre
        return np.sin(radius * k + phase)
    raise ValueError(f"unknown texture family {family!r}")  # pragma: no cover


class _Painter:
    """Draws one image at a time; holds what is shared by all images of one call."""

    def __init__(self, image_size, n_classes, max_objects, n_distractors, strength=0.0,
                 distractors="bodies"):
        self.size = image_size
        self.scale = image_size / 128.0
        self.n_classes = n_classes
        self.max_objects = max_objects
        self.n_distractors = n_distractors if distractors is not None else 0
        self.distractors = distractors
        self.strength = float(strength)
        # The first generator, bit for bit: no draw below that it did not make.
        self.legacy = self.strength == 0.0 and distractors == "bodies"
        self.styles = [body_style(c, self.strength) for c in range(n_classes)]
        g_fine = max(4, round(_BG_FINE[0] * self.scale))
        self.grids = [
            (_interp_matrix(_BG_COARSE[0], image_size), _BG_COARSE[0], _BG_COARSE[1]),
            (_interp_matrix(g_fine, image_size), g_fine, _BG_FINE[1]),
        ]

    # -- background -------------------------------------------------------
    def background(self, rng):
        """The background canvas and its base colour."""
        s = self.size
        canvas = np.empty((3, s, s), dtype=np.float32)
        base = rng.uniform(*_BG_BASE, size=3).astype(np.float32)
        canvas[:] = base[:, None, None]
        for m, g, amp in self.grids:
            coarse = rng.uniform(-amp, amp, size=(3, g, g)).astype(np.float32)
            canvas += m @ coarse @ m.T
        return np.ascontiguousarray(canvas.transpose(1, 2, 0)), base

    # -- geometry ---------------------------------------------------------
    def sample_geometry(self, rng, centre_low, centre_high, axis_ratio=_BODY_AXIS_RATIO):
        """Part half-size and body ellipse ``(r, cy, cx, a, b, theta)``; distractors use the
        body alone."""
        sc = self.scale
        u = rng.random(6)
        r = max((_PART_HALF_SIZE[0] + u[0] * (_PART_HALF_SIZE[1] - _PART_HALF_SIZE[0])) * sc,
                _MIN_PART_HALF_SIZE)  # fmt: skip
        a = (_BODY_SEMI_MAJOR[0] + u[1] * (_BODY_SEMI_MAJOR[1] - _BODY_SEMI_MAJOR[0])) * sc
        ratio = axis_ratio[0] + u[2] * (axis_ratio[1] - axis_ratio[0])
        b = max(a * ratio, r + 2.0)  # room for the part across the body
        a = max(a, b)
        theta = u[3] * np.pi * 2.0
        cy = centre_low + u[4] * (centre_high - centre_low)
        cx = centre_low + u[5] * (centre_high - centre_low)
        return r, cy, cx, a, b, theta

    def ellipse(self, cy, cx, a, b, theta, box=False):
        """Bounding-box slices and the boolean footprint of an ellipse (or, with ``box``, of
        the rectangle with half-sides ``a`` and ``b``), clipped to the image."""
        s = self.size
        y0, y1 = max(int(np.floor(cy - a)), 0), min(int(np.ceil(cy + a)) + 1, s)
        x0, x1 = max(int(np.floor(cx - a)), 0), min(int(np.ceil(cx + a)) + 1, s)
        if y0 >= y1 or x0 >= x1:
            return None
        dy = (np.arange(y0, y1, dtype=np.float32) - cy)[:, None]
        dx = (np.arange(x0, x1, dtype=np.float32) - cx)[None, :]
        ct, st = np.cos(theta), np.sin(theta)
        along = dx * ct + dy * st
        across = dy * ct - dx * st
        if box:
            inside = (np.abs(along) <= a * np.sqrt(0.5)) & (np.abs(across) <= b * np.sqrt(0.5))
        else:
            inside = (along / a) ** 2 + (across / b) ** 2 <= 1.0
        return (slice(y0, y1), slice(x0, x1)), inside, dy, dx

    def paint_body(self, rng, canvas, region, colour=_BODY_COLOUR, texture="stripes"):
        (sy, sx), inside, dy, dx = region
        u = rng.random(6)
        colour = colour + (u[:3].astype(np.float32) * 2.0 - 1.0) * _BODY_JITTER
        period = (_STRIPE_PERIOD[0] + u[3] * (_STRIPE_PERIOD[1] - _STRIPE_PERIOD[0])) * max(
            self.scale, 0.5
        )
        phi = u[4] * np.pi
        phase = u[5] * 2.0 * np.pi
        if texture == "stripes":  # the first generator's arithmetic, unchanged
            pattern = _STRIPE_AMPLITUDE * np.sin(
                (dx * np.cos(phi) + dy * np.sin(phi)) * (2.0 * np.pi / period) + phase
            )
        else:
            along = dx * np.cos(phi) + dy * np.sin(phi)
            across = dy * np.cos(phi) - dx * np.sin(phi)
            radius = np.sqrt(dx * dx + dy * dy)
            pattern = _STRIPE_AMPLITUDE * _texture(texture, along, across, radius, period, phase)
        texture_rgb = colour[None, None, :] + pattern[:, :, None]
        np.copyto(canvas[sy, sx], texture_rgb, where=inside[:, :, None])

    def paint_clutter(self, rng, canvas, region, base):
        """Clutter of the background's own kind: its base colour shifted, its blotchy texture."""
        (sy, sx), inside, _, _ = region
        m, g, amp = self.grids[1]
        colour = base + (rng.random(3).astype(np.float32) * 2.0 - 1.0) * _CLUTTER_SHIFT
        coarse = rng.uniform(-amp, amp, size=(3, g, g)).astype(np.float32) * _CLUTTER_BLOTCH
        blotches = (m @ coarse @ m.T).transpose(1, 2, 0)[sy, sx]
        np.copyto(canvas[sy, sx], colour[None, None, :] + blotches, where=inside[:, :, None])

    def part(self, cy, cx, r, class_index):
        """Slices and footprint of the part of ``class_index`` centred at (cy, cx), or None if
        it does not fit inside the image."""
        s = self.size
        if cy - r < 0 or cx - r < 0 or cy + r > s - 1 or cx + r > s - 1:
            return None
        y0, y1 = int(np.floor(cy - r)), int(np.ceil(cy + r)) + 1
        x0, x1 = int(np.floor(cx - r)), int(np.ceil(cx + r)) + 1
        v = ((np.arange(y0, y1, dtype=np.float32) - cy) / r)[:, None]
        u = ((np.arange(x0, x1, dtype=np.float32) - cx) / r)[None, :]
        shape, _ = part_style(class_index)
        return (slice(y0, y1), slice(x0, x1)), _part_footprint(shape, u, v)

    def part_centre(self, rng, cy, cx, a, b, theta, r):
        """Where the part sits: at the end of the body's major axis (always in the first
        generator), else uniformly anywhere the part keeps inside the body."""
        if self.legacy or rng.random() < _P_PART_AT_EDGE:
            d = a - r - 1.0
            return cy + d * np.sin(theta), cx + d * np.cos(theta)
        v = rng.random(2)
        rho, ang = np.sqrt(v[0]), 2.0 * np.pi * v[1]
        along, across = rho * (a - r - 1.0) * np.cos(ang), rho * (b - r - 1.0) * np.sin(ang)
        ct, st = np.cos(theta), np.sin(theta)
        return cy + along * st + across * ct, cx + along * ct - across * st

    def texture_of(self, rng, class_index):
        """The texture family of one body of ``class_index``."""
        _, texture, p, _ = self.styles[class_index]
        if self.legacy or texture == "stripes":
            return "stripes"
        return texture if rng.random() < p else "stripes"

    # -- one image --------------------------------------------------------
    def draw(self, rng):
        s = self.size
        canvas, base = self.background(rng)
        mask = np.zeros((s, s), dtype=np.uint8)
        instances = np.zeros((s, s), dtype=np.uint16)
        parts = np.zeros((s, s), dtype=bool)
        clutter = np.zeros((s, s), dtype=np.uint8)

        # Distractors: clutter without a part, anywhere (possibly cut by the border).
        for k in range(self.n_distractors):
            geometry = self.sample_geometry(rng, 0.0, s - 1.0)[1:]
            if self.legacy:
                region = self.ellipse(*geometry)
                if region is not None:
                    self.paint_body(rng, canvas, region)
            elif self.distractors == "bodies":  # a body of a random class, without its part
                c = int(rng.integers(0, self.n_classes))
                colour, _, _, _ = self.styles[c]
                texture = self.texture_of(rng, c)
                region = self.ellipse(*geometry)
                if region is not None:
                    self.paint_body(rng, canvas, region, colour, texture)
            else:  # "background": an ellipse or a rectangle of the background's own kind
                region = self.ellipse(*geometry, box=rng.random() < 0.5)
                if region is not None:
                    self.paint_clutter(rng, canvas, region, base)
            if region is not None:
                (ry, rx), inside = region[0], region[1]
                clutter[ry, rx][inside] = k + 1

        n_objects = 0 if rng.random() < _P_EMPTY else int(rng.integers(1, self.max_objects + 1))
        classes = rng.integers(0, self.n_classes, size=n_objects)
        placed = 0
        for c in classes:
            colour, _, _, ratio = self.styles[c]
            for _ in range(_MAX_TRIES):
                r, cy, cx, a, b, theta = self.sample_geometry(rng, 0.12 * s, 0.88 * s, ratio)
                part = self.part(*self.part_centre(rng, cy, cx, a, b, theta, r), r, int(c))
                if part is None:
                    continue
                body = self.ellipse(cy, cx, a, b, theta)
                (by, bx), inside = body[0], body[1]
                (py, px), footprint = part
                # Never hide the part of an object drawn earlier: its class would be
                # labelled without any evidence left in the image.
                if np.any(parts[by, bx] & inside) or np.any(parts[py, px] & footprint):
                    continue
                break
            else:
                continue  # no room: the object is dropped
            placed += 1
            self.paint_body(rng, canvas, body, colour, self.texture_of(rng, int(c)))
            mask[by, bx][inside] = c + 1
            instances[by, bx][inside] = placed
            canvas[py, px][footprint] = _PART_COLOURS[c % len(_PART_COLOURS)]
            mask[py, px][footprint] = c + 1
            instances[py, px][footprint] = placed
            parts[py, px] |= footprint

        # Per-pixel noise: the sum of two uniform bytes is triangular with standard
        # deviation 104.5 (about Gaussian, and 5x faster to draw than normals).
        noise = np.frombuffer(rng.bytes(2 * s * s * 3), dtype=np.uint8).reshape(2, s, s, 3)
        canvas += (noise[0].astype(np.float32) + noise[1] - 255.0) * (_PIXEL_NOISE / 104.5)
        np.clip(canvas, 0.0, 255.0, out=canvas)
        clutter[mask > 0] = 0  # objects are drawn over the distractors
        return np.rint(canvas).astype(np.uint8), mask, instances, parts, clutter


def _generate(
    n_samples, n_classes, image_size, max_objects, seed, *, body_class_strength=BODY_CLASS_STRENGTH,
    distractors="background", n_distractors=_N_DISTRACTORS, return_parts=False, return_clutter=False,
):
    """Draw the images; optionally also the instance maps (0, or k for the k-th object
    drawn) and the boolean maps of the class-specific parts (for tests and figures), and
    the clutter maps (0, or k where the k-th distractor shows; appended last)."""
    painter = _Painter(image_size, n_classes, max_objects, n_distractors, body_class_strength, distractors)
    X = np.empty((n_samples, image_size, image_size, 3), dtype=np.uint8)
    masks = np.empty((n_samples, image_size, image_size), dtype=np.uint8)
    if return_parts:
        instances = np.empty(masks.shape, dtype=np.uint16)
        parts = np.empty(masks.shape, dtype=bool)
    if return_clutter:
        clutter = np.empty(masks.shape, dtype=np.uint8)
    # One independent stream per image: image i depends only on (seed, i), so
    # make_shapes(n) is a prefix of make_shapes(m) for n <= m with the same seed.
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(n_samples)):
        X[i], masks[i], inst, part, clut = painter.draw(np.random.default_rng(child))
        if return_parts:
            instances[i], parts[i] = inst, part
        if return_clutter:
            clutter[i] = clut
    return (X, masks) + ((instances, parts) if return_parts else ()) + ((clutter,) if return_clutter else ())


@validate_params(
    {
        "n_samples": [Interval(Integral, 1, None, closed="left")],
        "n_classes": [Interval(Integral, 1, MAX_CLASSES, closed="both")],
        "image_size": [Interval(Integral, 32, None, closed="left")],
        "max_objects": [Interval(Integral, 1, None, closed="left")],
        "body_class_strength": [Interval(Real, 0, 1, closed="both")],
        "distractors": [StrOptions({"background", "bodies"}), None],
        "random_state": ["random_state"],
    },
    prefer_skip_nested_validation=True,
)
def make_shapes(
    n_samples=100, *, n_classes=4, image_size=128, max_objects=3,
    body_class_strength=BODY_CLASS_STRENGTH, distractors="background", random_state=None,
):
    """Make synthetic images whose objects are told best by a small part.

    Each object is a large textured body carrying a small part whose colour
    *and* shape tell its class (its "head"). The body's look (colour, texture
    family, elongation) carries weaker evidence of the class, set by
    ``body_class_strength``; bodies are coherent and differ from what
    surrounds them, as real objects do. Backgrounds are textured noise with
    clutter. As on real photos, a classifier needs only the discriminative
    part, so its class activation maps peak on the part and miss most of the
    object: the problem that AffinityNet's random walk solves. The masks label
    whole objects.

    ``make_shapes(..., body_class_strength=0, distractors="bodies")`` is the
    first generator, bit for bit from the same seed: bodies that look the same
    for every class on clutter that looks exactly like bodies. There no
    appearance-based affinity can tell a body from clutter, nor a body of one
    class from another, and the method is expected to fail (the hard case).

    Read more in the data conventions page, ``docs/data.md``.

    Parameters
    ----------
    n_samples : int, default=100
        Number of images, at least 1.
    n_classes : int, default=4
        Number of object classes, 1 to 20. The part of class column ``j`` has
        colour ``j % 8`` of (red, blue, green, yellow, magenta, cyan, white,
        black) and shape ``j % 5`` of (disc, square, triangle, cross, ring), so
        the (colour, shape) pairs of all classes differ, and the first five
        classes differ in both.
    image_size : int, default=128
        Height and width of the square images, at least 32. All sizes below are
        given at 128 px and scale with the image (parts keep at least 5 px
        across).
    max_objects : int, default=3
        Most objects per image, at least 1. An image holds no object with
        probability 0.05 (background only), else a number of objects drawn
        uniformly from 1 to ``max_objects``, each of a class drawn uniformly
        (repeats allowed). An object that cannot be placed in 20 tries without
        covering the part of an earlier one is dropped, so crowded settings
        give fewer objects than asked.
    body_class_strength : float in [0, 1], default=0.25
        How much a body's look tells its class. At strength ``s`` a body of
        class column ``j`` has a colour ``s`` of the way from the shared tan to
        class colour ``j % 8`` of (slate blue, sage green, dusty rose, grey,
        ochre, teal, lilac, brown), shows its class's texture family
        (``j % 4``: spots, checks, rings, stripes) with probability ``s`` and
        stripes otherwise, and has an axis ratio ``s`` of the way from the
        shared 0.6-1 to 0.8-1 (even ``j``, round) or 0.45-0.65 (odd ``j``,
        elongated). 0 is one look for every class, 1 fully distinct looks.
        The default keeps the part the most telling cue (a CAM classifier's
        maps peak on parts and cover about half of each object, as with
        class-blind bodies) while bodies are not class-blind (a colour
        histogram of a body alone tells its class 57% of the time, chance
        25%); from 0.5 on the maps spread over the bodies. docs/benchmarks.md
        gives the measurement.
    distractors : {"background", "bodies"} or None, default="background"
        Clutter, two blobs per image drawn before the objects and labelled
        background. "background": ellipses or rectangles of the background's
        own kind (its base colour shifted by up to 60 per channel, with its
        blotchy texture twice as strong), which resemble bodies only by chance.
        "bodies": drawn exactly like the bodies of a random class, without a
        part. None: no clutter.
    random_state : int, RandomState instance or None, default=None
        Seed of the generator. An int gives the same arrays on every call;
        image ``i`` depends only on the seed and ``i``, so the first ``n``
        images of ``make_shapes(m, random_state=s)`` are
        ``make_shapes(n, random_state=s)`` (same other parameters).

    Returns
    -------
    X : ndarray of shape (n_samples, image_size, image_size, 3), dtype uint8
        RGB images.
    Y : ndarray of shape (n_samples, n_classes), dtype uint8
        Image-level labels: ``Y[i, j] == 1`` iff class column ``j`` occurs in
        ``masks[i]`` (derived from the masks, so always consistent with them).
    masks : ndarray of shape (n_samples, image_size, image_size), dtype uint8
        Pixel labels: 0 background (clutter included), ``j + 1`` for class
        column ``j`` over the whole object (body and part). Objects drawn later
        are on top, and the mask follows the drawing order.

    Notes
    -----
    Design, in pixels at ``image_size=128``:

    - **Bodies**: ellipses with semi-major axis 13-25 px (26-50 px across),
      random angle, centre in the middle 76 % of the image; colour, texture
      family and axis ratio as ``body_class_strength`` says, the colour
      jittered by up to 18 per channel, the texture of period 5-8 px and
      amplitude 28.
    - **Parts** (class-specific): 8-14 px across, flat colour, inside the
      body: at one end of its major axis (half of the objects) or anywhere
      else the part fits inside it (the other half; in the hard case always
      at the end). A part is about a tenth of its object's area. Parts are
      never covered by a later object.
    - **Background**: per-image base colour uniform in 50-200 per channel,
      plus linearly interpolated colour noise on a 6x6 grid (amplitude 45)
      and a 16x16 grid (amplitude 20).
    - **Clutter**: 2 blobs per image, as ``distractors`` says.
    - Per-pixel noise (triangular, standard deviation 8) everywhere.

    Examples
    --------
    >>> from sklearn_psa.datasets import make_shapes
    >>> X, Y, masks = make_shapes(n_samples=5, image_size=64, random_state=0)
    >>> X.shape, X.dtype, Y.shape, masks.shape
    ((5, 64, 64, 3), dtype('uint8'), (5, 4), (5, 64, 64))
    >>> import numpy as np
    >>> bool(np.all(Y[0] == [int(j + 1 in masks[0]) for j in range(4)]))
    True
    >>> hard = make_shapes(5, image_size=64, body_class_strength=0, distractors="bodies",
    ...                    random_state=0)  # the first generator: the hard case
    """
    seed = check_random_state_seed(random_state)
    X, masks = _generate(n_samples, n_classes, image_size, max_objects, seed,
                         body_class_strength=body_class_strength, distractors=distractors)
    Y = labels_from_masks(masks, n_classes)
    return X, Y, masks
