"""Text captions of procedural scenes, read from the scene arrays (host side).

``caption(scene)`` describes the room or the outdoor ground, every object (class, colour or
material), posters (what the photo shows) and which objects move, e.g.

  "A room with brick walls, a wooden floor and a white ceiling, containing a wooden table,
   a gray cabinet and a poster of a cat; a red ball moves around."

``scene_objects(scene)`` returns the structured description the caption is made from.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from mirage_jax.data.worlds import textures
from mirage_jax.data.worlds.scene import CLASSES, COLOR_NAMES, GROUPS, STRUCTURAL_CLASSES, Scene, is_dynamic

__all__ = ["caption", "scene_objects", "IMAGE_DESCRIPTIONS"]

IMAGE_DESCRIPTIONS = {
    "astronaut": "an astronaut",
    "coffee": "a cup of coffee",
    "chelsea": "a cat",
    "rocket": "a rocket launch",
    "camera": "a photographer",
    "brick": "bricks",
    "grass": "grass",
    "gravel": "gravel",
}
_NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def _article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def _plural(noun: str) -> str:
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    return noun + "s"


def _image_name(scene: Scene, slot: int) -> str | None:
    names = np.asarray(scene.atlas_image)
    if 0 <= slot < len(names) and names[slot] >= 0:
        return textures.IMAGE_NAMES[int(names[slot])]
    return None


def _material(pattern: str, color: str, image: str | None) -> str:
    """Adjective phrase of a material: 'wooden', 'brick', 'striped blue', 'red', ..."""
    if pattern == "wood":
        return "wooden"
    if pattern == "brick":
        return "brick"
    if pattern == "image_tiled":
        return {"brick": "brick", "grass": "grassy", "gravel": "gravel"}.get(image or "", "textured")
    if pattern == "tiles":
        return f"{color} tiled"
    if pattern == "checker":
        return f"{color} checkered"
    if pattern == "stripes":
        return f"{color} striped"
    if pattern == "noise":
        return f"mottled {color}"
    return color


def scene_objects(scene: Scene) -> list[dict]:
    """One dict per object instance (ordered by instance id): index, class, color, pattern,
    material (adjective phrase), image (poster photo name or None), dynamic (bool), parts."""
    if np.ndim(scene.kind) != 0:
        raise ValueError("scene_objects takes a single scene, not a stacked batch")
    objs: dict[int, dict] = {}
    for g in GROUPS:
        p = scene.group(g)
        mask = np.asarray(p.mask)
        dyn = np.asarray(is_dynamic(p, xp=np))
        for j in np.nonzero(mask)[0]:
            idx = int(np.asarray(p.object_index)[j])
            o = objs.get(idx)
            if o is None:
                pattern = textures.PATTERNS[int(np.asarray(p.pattern)[j])]
                color = COLOR_NAMES[int(np.asarray(p.color_name)[j])]
                image = _image_name(scene, int(np.asarray(p.tex_slot)[j]))
                o = objs[idx] = dict(
                    index=idx,
                    cls=CLASSES[int(np.asarray(p.object_class)[j])],
                    color=color,
                    pattern=pattern,
                    material=_material(pattern, color, image),
                    image=image,
                    dynamic=False,
                    parts=0,
                )
            o["dynamic"] |= bool(dyn[j])
            o["parts"] += 1
    return [objs[k] for k in sorted(objs)]


def _object_phrase(o: dict) -> str:
    cls = o["cls"]
    if cls == "poster":
        return "poster of " + IMAGE_DESCRIPTIONS.get(o["image"] or "", "a photo")
    if cls == "lamp":
        return "floor lamp"
    if cls == "tree":
        return "tree"
    return f"{o['material']} {cls}"


def _join(items: list[str]) -> str:
    if not items:
        return ""
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _counted(phrases: list[str]) -> list[str]:
    out = []
    for phrase, n in Counter(phrases).items():  # Counter keeps first-seen order
        if n == 1:
            out.append(_article(phrase))
        else:
            words = phrase.split(" ")
            words[-1] = _plural(words[-1])
            out.append(f"{_NUMBERS[n] if n < len(_NUMBERS) else n} {' '.join(words)}")
    return out


def caption(scene: Scene) -> str:
    """A one-sentence English description of the scene (deterministic)."""
    objs = scene_objects(scene)
    structural = [o for o in objs if o["cls"] in STRUCTURAL_CLASSES]
    things = [o for o in objs if o["cls"] not in STRUCTURAL_CLASSES]
    static = _counted([_object_phrase(o) for o in things if not o["dynamic"]])
    moving = _counted([_object_phrase(o) for o in things if o["dynamic"]])
    if int(scene.kind) == 0:
        walls = [o for o in structural if o["cls"] == "wall"]
        wall_mats = []
        p = scene.planes
        classes = np.asarray(p.object_class)
        for j in np.nonzero(np.asarray(p.mask) & (classes == CLASSES.index("wall")))[0]:
            pattern = textures.PATTERNS[int(np.asarray(p.pattern)[j])]
            color = COLOR_NAMES[int(np.asarray(p.color_name)[j])]
            wall_mats.append(_material(pattern, color, _image_name(scene, int(np.asarray(p.tex_slot)[j]))))
        counts = Counter(wall_mats)
        main = counts.most_common(1)[0][0] if counts else (walls[0]["material"] if walls else "plain")
        wall_text = f"{main} walls"
        others = [m for m in counts if m != main]
        if others:
            wall_text += " and " + _join([_article(m) + " wall" for m in others])
        floor = next((o for o in structural if o["cls"] == "floor"), None)
        ceiling = next((o for o in structural if o["cls"] == "ceiling"), None)
        text = f"A room with {wall_text}"
        parts = []
        if floor:
            parts.append(_article(floor["material"]) + " floor")
        if ceiling:
            parts.append(_article(ceiling["material"]) + " ceiling")
        if parts:
            text += ", " + _join(parts)
        if static:
            text += ", containing " + _join(static)
        where = "around the room"
    else:
        ground = next((o for o in structural if o["cls"] == "ground"), None)
        g = ground["material"] if ground else "flat"
        ground_text = {"mottled green": "grassy", "mottled sand": "sandy"}.get(g, g)
        text = f"An outdoor scene under a blue sky on {ground_text} ground"
        if static:
            text += ", with " + _join(static)
        where = "across the ground"
    if moving:
        verb = "moves" if len(moving) == 1 and not moving[0].split(" ")[0] in _NUMBERS[2:] else "move"
        text += f"; {_join(moving)} {verb} {where}"
    return text + "."
