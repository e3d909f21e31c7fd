"""The procedural generator's operations written with PyTorch's Python API, for speed comparison.

Each operation follows the same algorithm as worker/src/generator/procedural/ in Rust: the batch
is grouped by operation, per-anomaly parameters are drawn on the CPU from the anomaly's own
random generator, and each operation runs once per group with batched tensor ops. Output pixels
are not meant to match the Rust generator bit for bit; the work per image is the same.

Usage: python procedural_torch.py [--count N] [--batch B] [--per-operation]
Prints one JSON line per (shape, family) case, like the Rust example bench_generator.
"""

import argparse
import json
import math
import random
import time

import torch

GLOBAL = ["rotate", "flip", "squeeze", "thickness", "stripes", "part_swap", "fill_gaps"]
LOCAL = ["erase", "cutpaste", "perlin", "warp", "intensity", "blur", "noise", "strokes", "blobs"]
SOURCE_IMAGES = 1000
MAX_SHAPES = 4


def column(values):
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1)


def columns(values, k):
    return torch.tensor(values, dtype=torch.float32).view(-1, k, 1, 1)


class Canvas:
    def __init__(self, images):
        _, self.c, self.h, self.w = images.shape
        self.xs = ((torch.arange(self.w, dtype=torch.float32) + 0.5) / self.w).view(1, 1, 1, -1)
        self.ys = ((torch.arange(self.h, dtype=torch.float32) + 0.5) / self.h).view(1, 1, -1, 1)


def blend(x, target, weight):
    return x + (target - x) * weight


def position(rng, extent):
    half = min(extent / 2.0, 0.5)
    return rng.uniform(half, 1.0 - half)


def rect_mask(cv, cx, cy, hw, hh):
    inside_x = (cv.xs - column(cx)).abs() <= column(hw)
    inside_y = (cv.ys - column(cy)).abs() <= column(hh)
    return (inside_x & inside_y).float()


def soft_ellipse(cv, cx, cy, rx, ry):
    d = (((cv.xs - column(cx)) / column(rx)) ** 2 + ((cv.ys - column(cy)) / column(ry)) ** 2).sqrt()
    return ((1.0 - d) * 3.0).clamp(0.0, 1.0)


def soft_regions(cv, items, area):
    cx, cy, r = [], [], []
    for rng, _ in items:
        radius = min(math.sqrt(area / math.pi), 0.7)
        cx.append(position(rng, 2 * radius))
        cy.append(position(rng, 2 * radius))
        r.append(radius)
    return soft_ellipse(cv, cx, cy, r, r)


def affine(images, thetas):
    theta = torch.tensor(thetas, dtype=torch.float32).view(-1, 2, 3)
    grid = torch.nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    return torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def max_pool3(x):
    h, w = x.shape[2], x.shape[3]
    p = torch.nn.functional.pad(x, (1, 1, 0, 0), mode="replicate")
    rows = torch.maximum(torch.maximum(p[..., 0:w], p[..., 1 : w + 1]), p[..., 2 : w + 2])
    p = torch.nn.functional.pad(rows, (0, 0, 1, 1), mode="replicate")
    return torch.maximum(torch.maximum(p[:, :, 0:h], p[:, :, 1 : h + 1]), p[:, :, 2 : h + 2])


def chain(x, steps, dilate):
    out = [x]
    for _ in range(steps):
        out.append(max_pool3(out[-1]) if dilate else -max_pool3(-out[-1]))
    return out


def fractional(levels, steps):
    total = 0
    for level, tensor in enumerate(levels):
        weights = [max(0.0, 1.0 - abs(min(s, len(levels) - 1) - level)) for s in steps]
        total = total + tensor * column(weights)
    return total


def perlin(rng, cells, h, w):
    side = cells + 1
    angles = torch.tensor([rng.random() * math.tau for _ in range(side * side)]).view(side, side)
    gx, gy = angles.cos(), angles.sin()
    v = (torch.arange(h, dtype=torch.float32) + 0.5) / h * cells
    u = (torch.arange(w, dtype=torch.float32) + 0.5) / w * cells
    cy = v.floor().clamp(max=cells - 1).long()
    cx = u.floor().clamp(max=cells - 1).long()
    fy, fx = (v - cy).view(-1, 1), (u - cx).view(1, -1)
    cy, cx = cy.view(-1, 1), cx.view(1, -1)

    def dot(ix, iy, dx, dy):
        return gx[iy, ix] * dx + gy[iy, ix] * dy

    fade = lambda t: t * t * t * (t * (t * 6 - 15) + 10)
    top = torch.lerp(dot(cx, cy, fx, fy), dot(cx + 1, cy, fx - 1, fy), fade(fx))
    bottom = torch.lerp(dot(cx, cy + 1, fx, fy - 1), dot(cx + 1, cy + 1, fx - 1, fy - 1), fade(fx))
    return torch.lerp(top, bottom, fade(fy))


def op_erase(cv, x, donors, items):
    cx, cy, hw, hh = [], [], [], []
    for rng, s in items:
        area = 0.15 * s
        w, h = min(math.sqrt(area), 1.0), min(math.sqrt(area), 1.0)
        cx.append(position(rng, w)), cy.append(position(rng, h)), hw.append(w / 2), hh.append(h / 2)
    return blend(x, 0.0, rect_mask(cv, cx, cy, hw, hh))


def op_cutpaste(cv, x, donors, items):
    cx, cy, hw, hh, thetas = [], [], [], [], []
    for rng, s in items:
        area = 0.1 * s
        w = h = min(math.sqrt(area), 1.0)
        x0, y0 = position(rng, w), position(rng, h)
        sx, sy = position(rng, w), position(rng, h)
        cx.append(x0), cy.append(y0), hw.append(w / 2), hh.append(h / 2)
        dx = round((sx - x0) * cv.w) / cv.w
        dy = round((sy - y0) * cv.h) / cv.h
        thetas.append([1, 0, 2 * dx, 0, 1, 2 * dy])
    return blend(x, affine(donors, thetas), rect_mask(cv, cx, cy, hw, hh))


def op_perlin(cv, x, donors, items):
    masks, textures, opacities = [], [], []
    for rng, s in items:
        threshold = 0.35 - 0.5 * s
        masks.append(((perlin(rng, 3, cv.h, cv.w) - threshold) / 0.08).clamp(0, 1))
        textures.append(torch.stack([(rng.uniform(0.2, 0.8) + 1.5 * perlin(rng, 6, cv.h, cv.w)).clamp(0, 1) for _ in range(cv.c)]))
        opacities.append(0.9 * (0.3 + 0.7 * s))
    mask = torch.stack(masks).unsqueeze(1)
    return blend(x, torch.stack(textures), mask * column(opacities))


def op_warp(cv, x, donors, items):
    cx, cy, sigma, bulge, sx, sy = [], [], [], [], [], []
    for rng, s in items:
        radius = 0.25
        cx.append(position(rng, radius)), cy.append(position(rng, radius))
        sigma.append(radius / 2), bulge.append(0.8 * s)
        angle = rng.uniform(0, math.tau)
        shear = 0.8 * 0.5 * s * radius
        sx.append(shear * math.cos(angle)), sy.append(shear * math.sin(angle))
    dx, dy = cv.xs - column(cx), cv.ys - column(cy)
    g = (-(dx**2 + dy**2) / (2 * column(sigma) ** 2)).exp()
    px = cv.xs - dx * g * column(bulge) - g * column(sx)
    py = cv.ys - dy * g * column(bulge) - g * column(sy)
    grid = torch.stack([(px * 2 - 1).squeeze(1), (py * 2 - 1).squeeze(1)], dim=3)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def op_intensity(cv, x, donors, items):
    shifts = [0.6 * (1 if rng.random() < 0.5 else -1) * s for rng, s in items]
    contrasts = [0.5 * s for _, s in items]
    mask = soft_regions(cv, items, 0.2)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return x + ((mean - x) * column(contrasts) + column(shifts)) * mask


def op_blur(cv, x, donors, items):
    sigma = 1.5 * min(cv.w, cv.h) / 28
    radius = min(max(math.ceil(3 * sigma), 1), 12)
    taps = torch.tensor([math.exp(-(k * k) / (2 * sigma * sigma)) for k in range(-radius, radius + 1)])
    taps = taps / taps.sum()
    strengths = [s for _, s in items]
    mask = soft_regions(cv, items, 0.3)
    p = torch.nn.functional.pad(x, (radius, radius, 0, 0), mode="replicate")
    horizontal = sum(p[..., k : k + cv.w] * taps[k] for k in range(2 * radius + 1))
    p = torch.nn.functional.pad(horizontal, (0, 0, radius, radius), mode="replicate")
    blurred = sum(p[:, :, k : k + cv.h] * taps[k] for k in range(2 * radius + 1))
    return blend(x, blurred, mask * column(strengths))


def op_noise(cv, x, donors, items):
    fields, scales = [], []
    for rng, s in items:
        fields.append(torch.tensor([rng.gauss(0, 1) for _ in range(cv.c * cv.h * cv.w)], dtype=torch.float32))
        scales.append(0.4 * s)
    mask = soft_regions(cv, items, 0.3)
    return x + torch.stack(fields).view(x.shape) * column(scales) * mask


def coverage(cv, distance, reach, active):
    edge = ((reach - distance) / (1.0 / cv.w) + 0.5).clamp(0, 1)
    return (edge * active).amax(dim=1, keepdim=True)


def op_strokes(cv, x, donors, items):
    x0, y0, dx, dy, hw, active, values, opacities = [], [], [], [], [], [], [], []
    for rng, s in items:
        length = 0.15 + 0.55 * s
        for slot in range(MAX_SHAPES):
            angle = rng.uniform(0, math.pi)
            x0.append(rng.uniform(0.1, 0.9)), y0.append(rng.uniform(0.1, 0.9))
            dx.append(length * math.cos(angle)), dy.append(length * math.sin(angle))
            hw.append(0.035), active.append(1.0 if slot < 2 else 0.0)
        values.append(1.0), opacities.append(0.4 + 0.6 * s)
    k = MAX_SHAPES
    px, py = cv.xs - columns(x0, k), cv.ys - columns(y0, k)
    dxt, dyt = columns(dx, k), columns(dy, k)
    t = ((px * dxt + py * dyt) / (dxt**2 + dyt**2).clamp(min=1e-9)).clamp(0, 1)
    distance = ((px - t * dxt) ** 2 + (py - t * dyt) ** 2).sqrt()
    mask = coverage(cv, distance, columns(hw, k), columns(active, k))
    return blend(x, column(values), mask * column(opacities))


def op_blobs(cv, x, donors, items):
    cx, cy, radius, active, values, opacities = [], [], [], [], [], []
    for rng, s in items:
        for slot in range(MAX_SHAPES):
            cx.append(rng.uniform(0.15, 0.85)), cy.append(rng.uniform(0.15, 0.85))
            radius.append(0.12 * (0.35 + 0.65 * s) * rng.uniform(0.7, 1.0))
            active.append(1.0 if slot < 2 else 0.0)
        values.append(1.0), opacities.append(0.4 + 0.6 * s)
    k = MAX_SHAPES
    distance = ((cv.xs - columns(cx, k)) ** 2 + (cv.ys - columns(cy, k)) ** 2).sqrt()
    mask = coverage(cv, distance, columns(radius, k), columns(active, k))
    return blend(x, column(values), mask * column(opacities))


def op_rotate(cv, x, donors, items):
    thetas = []
    for rng, s in items:
        sign = 1 if rng.random() < 0.5 else -1
        angle = math.radians(sign * 120 * s)
        thetas.append([math.cos(angle), -math.sin(angle), 0, math.sin(angle), math.cos(angle), 0])
    return affine(x, thetas)


def op_flip(cv, x, donors, items):
    # Every item has the default axis 0, a left-right flip of a vertical band.
    axes = [0] * len(items)
    result = x.clone()
    for axis, dim, centres in [(0, 3, cv.xs), (1, 2, cv.ys)]:
        rows = [i for i, item_axis in enumerate(axes) if item_axis == axis]
        if not rows:
            continue
        index = torch.tensor(rows)
        subset = x[index]
        band = (centres - 0.5).abs() <= column([items[i][1] / 2 for i in rows])
        result[index] = torch.where(band, subset.flip(dim), subset)
    return result


def op_squeeze(cv, x, donors, items):
    thetas = []
    for rng, s in items:
        sign = 1 if rng.random() < 0.5 else -1
        inverse = 1.0 / max(1 + sign * 0.5 * s, 0.05)
        axis = 0
        thetas.append([inverse, 0, 0, 0, 1, 0] if axis == 0 else [1, 0, 0, 0, inverse, 0])
    return affine(x, thetas)


def op_thickness(cv, x, donors, items):
    scale = min(cv.w, cv.h) / 28
    grow, shrink, grows = [], [], []
    for rng, s in items:
        g = rng.random() < 0.5
        steps = 2 * scale * s
        grow.append(steps if g else 0.0), shrink.append(0.0 if g else steps), grows.append(1.0 if g else 0.0)
    top = math.ceil(max(grow + shrink))
    grown = fractional(chain(x, top, True), grow)
    shrunk = fractional(chain(x, top, False), shrink)
    return blend(shrunk, grown, column(grows))


def op_fill_gaps(cv, x, donors, items):
    scale = min(cv.w, cv.h) / 28
    steps = [2 * scale * s for _, s in items]
    dilated = chain(x, math.ceil(max(steps)), True)
    closed = [chain(t, level, False)[-1] for level, t in enumerate(dilated)]
    return fractional(closed, steps)


def op_stripes(cv, x, donors, items):
    cos, sin, frequency, pu, pv, checks, strength = [], [], [], [], [], [], []
    for rng, s in items:
        angle = -1.0
        angle = rng.uniform(0, 180) if angle < 0 else angle
        cos.append(math.cos(math.radians(angle))), sin.append(math.sin(math.radians(angle)))
        frequency.append(math.tau / 0.2)
        pu.append(rng.uniform(0, math.tau)), pv.append(rng.uniform(0, math.tau))
        checks.append(0.0), strength.append(s)
    xs, ys = cv.xs - 0.5, cv.ys - 0.5
    u = xs * column(cos) + ys * column(sin)
    v = ys * column(cos) - xs * column(sin)
    first = ((u * column(frequency) + column(pu)).sin() > 0).float()
    if any(c > 0 for c in checks):
        second = ((v * column(frequency) + column(pv)).sin() > 0).float()
        pattern = blend(first, first + second - 2 * first * second, column(checks))
    else:
        pattern = first
    border = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, :, 0], x[:, :, :, -1]], dim=2).median(dim=2, keepdim=True).values.unsqueeze(3)
    silhouette = (((x - border).abs().mean(dim=1, keepdim=True) - 0.06) / 0.1).clamp(0, 1)
    return blend(x, 1.0 - x, pattern * silhouette * column(strength))


def op_part_swap(cv, x, donors, items):
    thetas, cuts, horizontal = [], [], []
    for rng, s in items:
        shift = 2 * 0.3 * s * (1 if rng.random() < 0.5 else -1)
        top_bottom = False  # the default axis 0 cuts left from right
        thetas.append([1, 0, shift, 0, 1, 0] if top_bottom else [1, 0, 0, 0, 1, shift])
        cuts.append(0.5), horizontal.append(1.0 if top_bottom else 0.0)
    moved = affine(donors, thetas)
    below = lambda: (cv.ys >= column(cuts)).float()
    right = lambda: (cv.xs >= column(cuts)).float()
    if all(h == 1.0 for h in horizontal):
        side = below()
    elif all(h == 0.0 for h in horizontal):
        side = right()
    else:
        side = blend(right(), below(), column(horizontal))
    return blend(x, moved, side)


OPERATIONS = {name: globals()[f"op_{name}"] for name in LOCAL + GLOBAL}


def generate(images, operations, count, batch, seed):
    n = images.shape[0]
    plans = []
    for index in range(count):
        rng = random.Random(seed * 1_000_003 + index)
        plans.append((rng.choice(operations), 0.05 + 0.95 * rng.random(), rng.randrange(n), rng.randrange(n), rng, index))
    # Sort by operation so each batch holds few operations, each in one run of rows.
    order = {name: position for position, name in enumerate(operations)}
    plans.sort(key=lambda plan: order[plan[0]])

    out = []
    for start in range(0, count, batch):
        chunk = plans[start : start + batch]
        sources = images[torch.tensor([p[2] for p in chunk])]
        donors = images[torch.tensor([p[3] for p in chunk])]
        parts = []
        first = 0
        while first < len(chunk):
            name = chunk[first][0]
            last = first
            while last < len(chunk) and chunk[last][0] == name:
                last += 1
            items = [(p[4], p[1]) for p in chunk[first:last]]
            subset = sources[first:last]
            parts.append(OPERATIONS[name](Canvas(subset), subset, donors[first:last], items))
            first = last
        out.append((torch.cat(parts).clamp(0, 1) * 255).round().to(torch.uint8))
    pixels = torch.cat(out)
    # Back to index order.
    return pixels[torch.tensor([p[5] for p in plans]).argsort()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--per-operation", action="store_true", help="also time each operation alone")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    for channels, side in [(1, 28), (3, 32)]:
        images = torch.rand(SOURCE_IMAGES, channels, side, side)
        cases = [("all", LOCAL + GLOBAL), ("global", GLOBAL), ("local", LOCAL)]
        if args.per_operation:
            cases += [(name, [name]) for name in LOCAL + GLOBAL]
        for family, operations in cases:
            generate(images, operations, args.batch, args.batch, 0)
            started = time.perf_counter()
            cpu_started = time.thread_time()
            output = generate(images, operations, args.count, args.batch, 1)
            seconds = time.perf_counter() - started
            cpu_seconds = time.thread_time() - cpu_started
            print(json.dumps({
                "implementation": "python-torch",
                "shape": f"{channels}x{side}x{side}",
                "family": family,
                "images": int(output.shape[0]),
                "batch": args.batch,
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "images_per_second": output.shape[0] / seconds,
                "images_per_cpu_second": output.shape[0] / cpu_seconds,
            }), flush=True)


if __name__ == "__main__":
    main()
