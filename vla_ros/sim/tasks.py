"""Language-conditioned table-top tasks for the built-in simulated Panda.

A scene holds a few coloured objects (cubes and cylinders, distinct colours). A task names
one of them and what to do with it:

* ``touch``: move to / touch the {color} {object};
* ``push``: push the {color} {object} {left | right | forward} (robot frame: +y is the
  robot's left, +x is forward, away from its base);
* ``pick``: pick up the {color} {object}.

Each family has many phrasings. ``TRAIN_TEMPLATES`` are what data collection uses;
``HELDOUT_TEMPLATES`` appear nowhere in training, to measure how far the language
encoder generalises (the issue's prototype saw touch drop from 96% to 70% on unseen
phrasings with only a handful of training phrasings, hence tens of them here).
``NEWWORDS_TEMPLATES`` go further: their verbs, object nouns (``NEWWORDS_NOUNS``),
direction words (``NEWWORDS_DIRECTION_WORDS``) and sentence shapes occur nowhere in
training, and a few carry filler words, typos or other capitalisation. Only function
words (``SHARED_FUNCTION_WORDS``) and the colour names are shared with training: the
colour is what tells the objects apart, and keeping its word fixed means a failure on
this set is about the verb, the noun or the direction, not about which object was meant.

No pybullet here: tasks are plain data, success predicates live in panda.py.
"""
from __future__ import annotations

import dataclasses

import numpy as np

FAMILIES = ("touch", "push", "pick")
PHRASINGS = ("train", "heldout", "newwords")

# Linear RGB in [0, 1], far apart in hue so a 96 px camera tells them apart.
COLORS = {
    "red": (0.85, 0.12, 0.10),
    "green": (0.10, 0.65, 0.15),
    "blue": (0.12, 0.25, 0.90),
    "yellow": (0.95, 0.85, 0.10),
}
SHAPES = ("cube", "cylinder")
# Nouns used for each shape in instructions (training uses all of them).
NOUNS = {"cube": ("cube", "block", "box"), "cylinder": ("cylinder", "can", "round block")}
# Push directions in the robot's base frame (x forward, y left).
DIRECTIONS = {"left": (0.0, 1.0), "right": (0.0, -1.0), "forward": (1.0, 0.0)}
DIRECTION_WORDS = {
    "left": ("left", "to the left", "leftward"),
    "right": ("right", "to the right", "rightward"),
    "forward": ("forward", "forwards", "away from the robot"),
}

TRAIN_TEMPLATES = {
    "touch": (
        "touch the {obj}", "move to the {obj}", "go to the {obj}", "reach the {obj}",
        "touch the {obj} with the gripper", "move the gripper to the {obj}", "put your hand on the {obj}",
        "reach for the {obj}", "tap the {obj}", "poke the {obj}", "go touch the {obj}",
        "please touch the {obj}", "can you touch the {obj}", "move over to the {obj} and touch it",
        "bring the gripper onto the {obj}", "make contact with the {obj}", "place the gripper on the {obj}",
        "touch the {obj} please", "go and tap the {obj}", "move your gripper onto the {obj}",
        "reach out and touch the {obj}", "head to the {obj}", "press on the {obj}",
        "gently touch the {obj}",
    ),
    "push": (
        "push the {obj} {dir}", "move the {obj} {dir}", "shove the {obj} {dir}", "slide the {obj} {dir}",
        "nudge the {obj} {dir}", "push the {obj} a bit {dir}", "please push the {obj} {dir}",
        "can you push the {obj} {dir}", "move the {obj} {dir} by pushing it", "push {dir} the {obj}",
        "slide {dir} the {obj}", "use the gripper to push the {obj} {dir}", "give the {obj} a push {dir}",
        "shift the {obj} {dir}", "push the {obj} over {dir}", "drag the {obj} {dir}",
        "sweep the {obj} {dir}", "bump the {obj} {dir}", "move the {obj} to the {dir} side",
        "push that {obj} {dir}", "displace the {obj} {dir}", "slide the {obj} a little {dir}",
    ),
    "pick": (
        "pick up the {obj}", "grab the {obj}", "lift the {obj}", "pick the {obj} up", "grasp the {obj}",
        "take the {obj}", "raise the {obj}", "pick up the {obj} please", "can you pick up the {obj}",
        "grab the {obj} and lift it", "lift up the {obj}", "get the {obj}", "hold up the {obj}",
        "grasp and lift the {obj}", "please grab the {obj}", "pick the {obj} off the table",
    ),
}
# Phrasings that appear nowhere in TRAIN_TEMPLATES (checked by a test).
HELDOUT_TEMPLATES = {
    "touch": (
        "could you lay a finger on the {obj}", "I want you to contact the {obj}",
        "approach the {obj} until you touch it", "your task: touch the {obj}",
        "get your fingers onto the {obj}", "find the {obj} and touch it",
    ),
    "push": (
        "I want the {obj} pushed {dir}", "could you shove that {obj} {dir}",
        "your task: slide the {obj} {dir}", "find the {obj} and push it {dir}",
        "knock the {obj} {dir}", "get the {obj} to move {dir}",
    ),
    "pick": (
        "I want you to lift the {obj}", "could you pick that {obj} up",
        "your task: grab the {obj}", "find the {obj} and pick it up",
    ),
}

# The "newwords" set: none of its words occur in TRAIN_TEMPLATES, NOUNS or DIRECTION_WORDS
# except SHARED_FUNCTION_WORDS and the colour names (checked by a test). Left and right have
# few English synonyms, so they are named as a pilot would (port / starboard, nine / three
# o'clock). {Obj}/{OBJ} and {Dir}/{DIR} are the title-cased and upper-cased forms. Every
# word list has as many entries per object shape and per direction, so variants of one seed
# (sample_task's target / direction) consume the same random draws.
SHARED_FUNCTION_WORDS = frozenset(("a", "an", "and", "by", "for", "from", "in", "it", "of", "on", "onto", "over",
                                   "that", "the", "this", "to", "with", "you", "your", "i"))
NEWWORDS_NOUNS = {"cube": ("brick", "cuboid", "object", "one"), "cylinder": ("tube", "canister", "object", "one")}
NEWWORDS_DIRECTION_WORDS = {
    "left": ("to port", "toward nine o'clock", "portward"),
    "right": ("to starboard", "toward three o'clock", "starboardward"),
    "forward": ("ahead", "toward the camera", "outward"),
}
NEWWORDS_TEMPLATES = {
    "touch": (
        "pat the {obj}", "dab the {obj}", "boop the {obj}", "graze the {obj} with your fingertips",
        "rest your fingertips on the {obj}", "the {obj} -- feel it", "{Obj}: pat it", "time to dab the {obj}",
        "see the {obj}? boop it", "would you kindly brush against the {obj}", "um, just pat the, uh, {obj}",
        "tuoch teh {obj}", "PAT THE {OBJ}", "Dab The {Obj}",
    ),
    "push": (
        "budge the {obj} {dir}", "scoot the {obj} {dir}", "shunt the {obj} {dir}", "propel the {obj} {dir}",
        "jostle the {obj} {dir}", "{dir}, budge the {obj}", "the {obj} needs relocating {dir}",
        "what i need: the {obj} shunted {dir}", "see the {obj}? scoot it {dir}",
        "okay so, uh, scoot the {obj} {dir}", "psuh teh {obj} {dir}", "BUDGE THE {OBJ} {DIR}",
        "Scoot The {Obj} {Dir}",
    ),
    "pick": (
        "hoist the {obj}", "pluck the {obj}", "snatch the {obj}", "seize the {obj}", "elevate the {obj}",
        "the {obj}: hoist it", "i need the {obj} in the air", "see the {obj}? snatch it",
        "um, pluck the, uh, {obj}", "sieze teh {obj}", "HOIST THE {OBJ}", "Pluck The {Obj}",
    ),
}
TEMPLATES = {"train": TRAIN_TEMPLATES, "heldout": HELDOUT_TEMPLATES, "newwords": NEWWORDS_TEMPLATES}
WORDS = {"train": (NOUNS, DIRECTION_WORDS), "heldout": (NOUNS, DIRECTION_WORDS),
         "newwords": (NEWWORDS_NOUNS, NEWWORDS_DIRECTION_WORDS)}


@dataclasses.dataclass
class SceneObject:
    """One object on the table: its colour, shape and initial pose (x, y, yaw)."""
    color: str
    shape: str
    x: float
    y: float
    yaw: float

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclasses.dataclass
class Task:
    """What to do: the family, the target object's index in the scene, a push direction."""
    family: str
    target: int
    instruction: str
    direction: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def sample_scene(rng: np.random.Generator, count: int = 3, x_range=(0.40, 0.62), y_range=(-0.18, 0.18),
                 min_distance: float = 0.12) -> list[SceneObject]:
    """``count`` objects of distinct colours at random positions at least min_distance apart."""
    if count > len(COLORS):
        raise ValueError(f"at most {len(COLORS)} objects (one per colour), asked for {count}")
    colors = rng.choice(sorted(COLORS), size=count, replace=False)
    objects: list[SceneObject] = []
    for color in colors:
        for _ in range(1000):
            x, y = rng.uniform(*x_range), rng.uniform(*y_range)
            if all(np.hypot(x - o.x, y - o.y) >= min_distance for o in objects):
                break
        else:
            raise RuntimeError("could not place the objects apart; widen the ranges")
        objects.append(SceneObject(str(color), str(rng.choice(SHAPES)), float(x), float(y),
                                   float(rng.uniform(-0.3, 0.3))))
    return objects


def describe(obj: SceneObject, rng: np.random.Generator, nouns=NOUNS) -> str:
    return f"{obj.color} {rng.choice(nouns[obj.shape])}"


def sample_task(rng: np.random.Generator, objects: list[SceneObject], family: str | None = None,
                phrasing: str = "train", target: int | None = None, direction: str | None = None) -> Task:
    """A random task on ``objects`` (family random when None), phrased from the chosen set.

    ``target`` (an object index) and ``direction`` (push only) replace the sampled ones; the
    random draws stay the same, so variants of one seed share their template and wording
    and differ only in the object's colour or the direction (the listening probe).
    """
    if family is None:
        family = str(rng.choice(["touch", "push"]))
    if family not in FAMILIES:
        raise ValueError(f"unknown task family {family!r}; expected one of {FAMILIES}")
    if phrasing not in PHRASINGS:
        raise ValueError(f"unknown phrasing set {phrasing!r}; expected one of {PHRASINGS}")
    if target is not None and not 0 <= target < len(objects):
        raise ValueError(f"target {target} is not an object index (0..{len(objects) - 1})")
    if direction and (family != "push" or direction not in DIRECTIONS):
        raise ValueError(f"direction {direction!r} needs family push and one of {sorted(DIRECTIONS)}")
    nouns, direction_words = WORDS[phrasing]
    templates = TEMPLATES[phrasing][family]
    drawn = int(rng.integers(len(objects)))
    target = drawn if target is None else int(target)
    fields = {"obj": describe(objects[target], rng, nouns)}
    if family == "push":
        drawn_dir = str(rng.choice(sorted(DIRECTIONS)))
        direction = direction or drawn_dir
        fields["dir"] = str(rng.choice(direction_words[direction]))
    else:
        direction = ""
    for key in list(fields):
        fields[key.capitalize()], fields[key.upper()] = fields[key].title(), fields[key].upper()
    template = str(rng.choice(templates))
    return Task(family, target, template.format(**fields), direction)
