"""Writes ``keeper_logs.txt``: the demo's training text, generated so it can be large, learnable and
free to ship.

    python -m triton_qat.data.make_corpus      # rewrites triton_qat/data/keeper_logs.txt

The pages of the lighthouse keeper's green notebooks (see ``corpus.txt``): one entry a day with the
weather, the wind, the sea, the ships that passed and a few sentences on the work, drawn from fixed
lists and templates with a fixed seed. A character-level model has to learn the spelling of a few
hundred words, the layout of an entry, which words go together and the day count, so a small model
gets far below the unigram loss, while the choices left open keep it from reaching zero.
"""

from __future__ import annotations

import random
from pathlib import Path

OUT = Path(__file__).parent / "keeper_logs.txt"
SEASONS = ["winter", "winter", "spring", "spring", "summer", "summer", "autumn", "autumn"]
WINDS = ["north", "north-east", "east", "south-east", "south", "south-west", "west", "north-west"]
STRENGTH = ["calm", "light", "moderate", "fresh", "strong", "a gale"]
SKY = {
    "winter": ["snow in the morning", "grey all day", "sleet after dark", "clear and cold", "rain"],
    "spring": ["showers", "bright with high cloud", "fog until noon", "rain in the evening"],
    "summer": ["clear", "hot and still", "haze over the water", "thunder to the south", "fair"],
    "autumn": ["rain", "low cloud", "fog at dawn", "squalls from the west", "clear and cold"],
}
SEA = ["flat", "slight", "moderate", "rough", "high", "very high"]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve"]
SHIPS = [
    "the Grey Heron",
    "the Margaret",
    "the Northern Star",
    "the Alba",
    "the Kestrel",
    "the Good Intent",
    "the Providence",
    "the Mary Ellen",
    "the Swift",
    "the Orkney Lass",
    "the Endeavour",
    "the Cormorant",
    "the Hope",
    "the Three Sisters",
    "the Ranger",
    "the Bonny Jean",
    "the Curlew",
    "the Faithful",
    "the Dawn",
    "the Silver Fern",
]
KINDS = ["a schooner", "a steamer", "a fishing boat", "a brig", "a collier", "the mail boat"]
HEADINGS = [
    "bound north",
    "bound south",
    "bound for the mainland",
    "running before the wind",
    "at anchor off the point",
    "beating west",
    "in ballast",
    "low in the water",
]
TIMES = [
    "at dawn",
    "in the morning",
    "at noon",
    "in the afternoon",
    "at dusk",
    "after dark",
    "before midnight",
    "in the small hours",
]
BIRDS = ["gulls", "terns", "puffins", "gannets", "cormorants", "eiders", "kittiwakes"]
PARTS = [
    "the lens",
    "the gears",
    "the brass key",
    "the burner",
    "the glass",
    "the clockwork",
    "the oil tank",
    "the door on the gallery",
    "the ladder",
    "the weights",
]
FIXES = ["cleaned", "oiled", "polished", "checked", "wound", "trimmed", "painted", "tightened"]
NOTES = [
    "The keeper climbed the steps {time} and lit the lamp.",
    "He {fix} {part} and found all in good order.",
    "{Part} needed work; he {fix} it twice before it ran true.",
    "The salt came back on the glass {time}, and he wiped it away.",
    "The light turned all night: a flash, then darkness, then a flash again.",
    "A storm came up {time} and he did not sleep.",
    "The wind pushed against the tower and the rain ran down the glass in sheets.",
    "He counted {n} {birds} on the rock below the tower.",
    "The {birds} came back to the cliffs {time}.",
    "He sat in the watch room with a pot of tea and listened to the gears.",
    "The gears ticked when they were cold and hummed when they were warm.",
    "He wrote a letter to the office and said that he needed nothing.",
    "The supply boat came {time} with flour, tea, oil and rope.",
    "He carried a can of oil up the one hundred and twelve steps.",
    "Fog lay on the water {time}, and he rang the bell every {n} minutes.",
    "The lamp burned white and not yellow.",
    "He trimmed the flame {time} so that it would burn clean.",
    "A boat from the island came out to fetch the post.",
]
SKIP = {"a gale": "in a gale", "calm": "calm"}


def entry(rng: random.Random, day: int) -> str:
    season = SEASONS[(day // 46) % len(SEASONS)]
    wind = rng.choice(STRENGTH)
    wind_line = "Wind: calm." if wind == "calm" else f"Wind: {wind}, from the {rng.choice(WINDS)}."
    # the sea follows the wind, and its height in feet follows the sea
    k = STRENGTH.index(wind)
    sea = SEA[min(len(SEA) - 1, max(0, k + rng.choice([-1, 0, 0, 1])))]
    feet = rng.choice(NUMBERS[max(0, 2 * SEA.index(sea) - 2) : 2 * SEA.index(sea) + 1])
    height = "" if sea == "flat" else f", {feet} foot" if feet == "one" else f", {feet} feet"
    lines = [
        f"Day {day}, {season}.",
        f"{wind_line} Sky: {rng.choice(SKY[season])}. Sea: {sea}{height}.",
    ]
    ships = []
    for _ in range(rng.choice([0, 0, 1, 1, 1, 2, 2, 3])):
        name = rng.choice(SHIPS)
        ships.append(f"{name}, {rng.choice(KINDS)}, {rng.choice(HEADINGS)} {rng.choice(TIMES)}")
    lines.append("Ships: " + ("; ".join(ships) + "." if ships else '"none", underlined twice.'))
    notes = []
    for template in rng.sample(NOTES, rng.randint(1, 3)):
        part = rng.choice(PARTS)
        notes.append(
            template.format(
                time=rng.choice(TIMES),
                fix=rng.choice(FIXES),
                part=part,
                Part=part[0].upper() + part[1:],
                n=rng.choice(NUMBERS),
                birds=rng.choice(BIRDS),
            )
        )
    lines.append(" ".join(notes))
    return "\n".join(lines) + "\n"


def generate(n_chars: int = 400_000, seed: int = 13) -> str:
    rng = random.Random(seed)
    out, size, day = [], 0, 1
    while size < n_chars:
        page = entry(rng, day)
        out.append(page)
        size += len(page) + 1
        day += 1
    return "\n".join(out)


if __name__ == "__main__":
    text = generate()
    OUT.write_text(text, encoding="utf-8")
    print(f"{OUT}: {len(text)} characters, {len(set(text))} distinct")
