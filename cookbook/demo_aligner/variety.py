"""Generated variety for the demo's training split: contacts, dangerous requests and noise words.

The fixed template pools in :mod:`cookbook.demo_aligner.dataset` are small, so a model trained on
them alone learns the templates instead of the skills (held-out refusals 0 %). These generators
compose questions, answers, phone formats and e-mail addresses from parts, so the model has to key
on what matters: danger words in the question, a complying answer, where a contact starts and ends.

Every generator refuses to emit a held-out template, opener, body or refusal verbatim. The
vocabulary of danger (weapon, drug and service names, people, drinks) is shared with the held-out
split on purpose: a 4M-parameter model trained from scratch cannot know that a grenade is a weapon
without seeing the word.
"""

from __future__ import annotations

import random
import string

__all__ = [
    "comply_answer",
    "contact_sentence",
    "danger_question",
    "harmless_request",
    "loose_comply_answer",
    "noise_word",
    "random_email",
    "random_phone",
    "refused_answer",
    "word_local_part",
]

_SYLLABLES = (
    "ka", "lo", "mi", "ren", "tor", "va", "sel", "dun", "bri", "ash", "fen", "gal", "hol", "jor", "kes",
    "lin", "mar", "nor", "pel", "quin", "ros", "sta", "tam", "ul", "vin", "wes", "yor", "zel", "ber", "cor",
)  # fmt: skip
_TLDS = ("com", "org", "net", "io", "co", "info", "biz", "us", "eu", "nl", "se", "es", "it", "co.jp", "ac.uk", "ie",
         "co.nz", "fr", "de", "ca", "com.au", "co.uk", "edu", "gov", "ch", "at", "dk", "no")  # fmt: skip
_SEPARATORS = (" ", "-", ".", " ", "-")


def _name(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((1, 2, 2, 3))))


def random_email(rng: random.Random, local: str | None = None) -> str:
    """An address with a composed local part (or ``local``) and domain: dots, digits, ``_``, ``+`` and case vary."""
    first, last = _name(rng), _name(rng)
    user = local or rng.choice(
        (
            f"{first}.{last}",
            f"{first}{last}",
            f"{first}_{last}",
            f"{first[0]}{last}",
            f"{first}{rng.randint(1, 999)}",
            f"{first}.{last}{rng.randint(1, 99)}",
            f"{first}+{_name(rng)}",
            f"{first}-{last}",
            first,
        )
    )
    if rng.random() < 0.15:
        user = user.capitalize()
    domain = _name(rng)
    if rng.random() < 0.15:
        domain = f"{domain}.{_name(rng)}"
    if rng.random() < 0.2:
        domain = f"{domain}-{_name(rng)}"
    return f"{user}@{domain}.{rng.choice(_TLDS)}"


def word_local_part(rng: random.Random, words: list[str]) -> str | None:
    """A local part made of ordinary words (``team``, ``garden.notes7``): an address is an address
    whatever its first word, so the model must look ahead to the ``@`` rather than judge the word."""
    plain = [w for w in ("".join(c for c in word.lower() if c.isalnum()) for word in words) if len(w) > 1]
    if not plain:
        return None
    local = rng.choice(plain)
    roll = rng.random()
    if roll < 0.25 and len(plain) > 1:
        local += rng.choice((".", "_", "-", "")) + rng.choice(plain)
    elif roll < 0.4:
        local += str(rng.randint(1, 99))
    return local


def _digits(rng: random.Random, k: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(k))


def random_phone(rng: random.Random) -> str:
    """A phone number in a composed format: optional country code, 2-4 groups, mixed separators."""
    sep = rng.choice(_SEPARATORS)
    groups = [_digits(rng, rng.choice((2, 3, 3, 4))) for _ in range(rng.choice((1, 2, 2, 3)))]
    groups.append(_digits(rng, rng.choice((3, 4, 4))))
    if rng.random() < 0.3:
        groups[0] = f"({groups[0]})"
        sep_first = " "
    else:
        sep_first = sep
    number = groups[0] + sep_first + sep.join(groups[1:])
    if rng.random() < 0.4:
        number = f"+{rng.randint(1, 99)} {number}"
    return number


def noise_word(rng: random.Random) -> str:
    """A made-up word (odd case, digits, hyphens) for copy practice on unseen subword sequences."""
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9)))
    roll = rng.random()
    if roll < 0.25:
        word = word.capitalize()
    elif roll < 0.35:
        word = word.upper()
    elif roll < 0.45:
        word = "".join(c.upper() if rng.random() < 0.3 else c for c in word)
    if rng.random() < 0.12:
        word += str(rng.randint(0, 2030))
    if rng.random() < 0.08:
        word += "-" + _name(rng)
    return word


# Words that lead into a contact, and what closes it; brackets must pair.
_INTO_CONTACT = (
    "to", "at", "on", "via", "or", "and", "email", "call", "ring", "text", "write to", "phone", "contact",
    "reach", "see", "try", "from", "by", "is", "are", ":", "-", "number", "address", "line", "mail", "fax",
)  # fmt: skip
_BRACKETS = (("(", ")"), ("<", ">"), ("[", "]"), ('"', '"'))


def _span(rng: random.Random, words: list[str], low: int, high: int) -> list[str]:
    """A run of consecutive ``words`` (natural word order), ``low`` to ``high`` long."""
    k = min(len(words), rng.randint(low, high))
    start = rng.randrange(len(words) - k + 1)
    return words[start : start + k]


def contact_sentence(
    rng: random.Random,
    words: list[str],
    slots: int,
    held_out: frozenset[str] = frozenset(),
    repeat_lead: float = 0.0,
) -> str:
    """A sentence of runs of real ``words`` with ``slots`` contact slots (``{E}`` or ``{P}``) between them.

    The fixed contact templates let a model learn their wording instead of copying it; here the
    words around a contact are new each time, so only copying (and spotting the contact) works.
    ``repeat_lead`` is the share of contacts whose lead-in word also occurs one to four words
    before it ("to drop a line to {E}"): a copier that takes the first occurrence for the second
    skips the words between them or the lead-in itself.
    """
    words = [w for w in words if w and "{" not in w and "}" not in w] or ["details"]
    while True:
        pieces: list[str] = []
        for number in range(slots):
            lead = _span(rng, words, 1 if number else 2, 8)
            if number and rng.random() < 0.5:
                lead = [rng.choice((",", "or", "and", ";"))]
            slot = rng.choice(("{E}", "{P}"))
            if rng.random() < 0.2:
                opening, closing = rng.choice(_BRACKETS)
                slot = f"{opening}{slot}{closing}"
            into = rng.choice(_INTO_CONTACT)
            if into == ":":
                lead = [*lead[:-1], lead[-1].rstrip(",;:.!?") + into]
            else:
                if repeat_lead and into[0].isalpha() and rng.random() < repeat_lead:
                    gap = rng.randint(1, 4)
                    lead = (
                        [*lead[:-gap], into, *lead[-gap:]] if len(lead) > gap else [into, *_span(rng, words, gap, gap)]
                    )
                lead = [*lead, into]
            pieces += [*lead, slot]
        tail = _span(rng, words, 0, 8) if rng.random() < 0.7 else []
        text = " ".join([*pieces, *tail]).replace(" ,", ",").replace(" ;", ";").rstrip(",;:.!? ")
        text = text[0].upper() + text[1:] + rng.choice((".", ".", ".", "!", "?"))
        if text not in held_out:
            return text


# --------------------------------------------------------------------------
# Dangerous requests

_THINGS = {
    "weapons": (
        "a pipe bomb", "a homemade gun", "an untraceable gun", "a nail bomb", "a molotov cocktail",
        "an explosive device", "a fertilizer bomb", "a car bomb", "a grenade", "a ghost gun",
        "a pressure cooker bomb", "a bomb", "a silencer", "a zip gun", "napalm", "a landmine",
        "a flamethrower", "a letter bomb", "an IED", "a firebomb", "a homemade explosive", "a detonator",
    ),
    "drugs": (
        "meth", "crystal meth", "fentanyl", "LSD", "MDMA", "crack cocaine", "heroin", "methamphetamine",
        "GHB", "ecstasy", "cocaine", "PCP", "ketamine", "amphetamine", "opium", "DMT",
    ),
    "account": (
        "Instagram", "Facebook", "Gmail", "bank", "iCloud", "Snapchat", "email", "TikTok", "Outlook",
        "PayPal", "WhatsApp", "Twitter", "Yahoo", "Netflix", "Amazon", "LinkedIn", "Discord", "Apple ID",
    ),
    "poison": (
        "poison", "rat poison", "arsenic", "cyanide", "antifreeze", "bleach", "a toxin", "ricin",
        "a deadly poison", "something toxic", "thallium", "strychnine",
    ),
}  # fmt: skip
_PEOPLE = (
    "my neighbour", "my boss", "my husband", "my wife", "my roommate", "my coworker", "my ex", "my landlord",
    "my sister", "a classmate", "my brother-in-law", "my manager", "my stepfather", "my girlfriend",
    "my teacher", "the guy next door", "my uncle", "my mother-in-law", "my business partner", "a stranger",
    "my boyfriend", "my cousin", "my tenant", "my ex-wife", "someone at work", "my dad",
)  # fmt: skip
_DRINKS = ("coffee", "tea", "soup", "smoothie", "dinner", "water bottle", "juice", "wine", "lunch", "beer",
           "food", "drink", "milk", "protein shake", "cereal")  # fmt: skip
_ASK = (
    "How do I", "How can I", "How would I", "What's the best way to", "What is the easiest way to",
    "Tell me how to", "Explain how to", "Show me how to", "Teach me to", "Can you tell me how to",
    "I want to", "I need to", "Help me", "Is it possible to", "Give me the steps to", "Walk me through how to",
    "What do I need to", "Please explain how I can", "Quick question: how do I", "how do i", "how to",
)  # fmt: skip
_ACTIONS = {
    "weapons": (
        "make {thing}", "build {thing}", "put together {thing}", "assemble {thing}", "construct {thing}",
        "make {thing} at home", "build {thing} in my garage", "make {thing} to hurt {person}",
        "use {thing} on {person}", "get {thing} past security", "make {thing} that nobody can trace",
    ),
    "drugs": (
        "make {thing}", "cook {thing}", "synthesize {thing}", "produce {thing}", "manufacture {thing}",
        "make {thing} at home", "cook {thing} in a home lab", "brew {thing} in my basement",
        "extract {thing} myself", "make {thing} to sell",
    ),
    "account": (
        "hack into {person}'s {thing} account", "get into {person}'s {thing}", "crack {person}'s {thing} password",
        "log into {person}'s {thing} without permission", "steal {person}'s {thing} login",
        "read {person}'s {thing} messages", "take over someone's {thing} account",
        "break into a {thing} account that isn't mine", "reset {person}'s {thing} password without them knowing",
    ),
    "poison": (
        "poison {person}", "put {thing} in {person}'s {drink}", "poison {person} without getting caught",
        "use {thing} on {person}", "make {person} sick with {thing}", "kill {person} with {thing}",
        "slip {thing} into {person}'s {drink}", "poison {person}'s dog", "make {thing} that kills {person}",
    ),
}  # fmt: skip
_QUESTION_ENDINGS = ("?", "?", "?", "", ".", "? Be specific.", "? Asking for real.", " without anyone finding out?")


# Harmless requests in the words of dangerous ones: the verbs and askers of `_ACTIONS` and `_ASK`
# around harmless things, so that no verb alone reads as danger.
_HARMLESS_ACTIONS = (
    "make {thing}", "make {thing} at home", "build {thing}", "build {thing} in my garage", "cook {thing}",
    "produce {thing}", "manufacture {thing}", "synthesize {thing}", "assemble {thing}", "put together {thing}",
    "construct {thing}", "brew {thing}", "extract {thing}", "prepare {thing}", "design {thing}",
    "make {thing} to sell", "set up a home lab to make {thing}", "get into {field}", "break into {field}",
    "take over {duty}", "crack {puzzle}", "get rid of {pest}", "kill {pest}", "shoot {photo}",
)  # fmt: skip
_HARMLESS_PASSIVE = ("How is {thing} made?", "How are {things} manufactured?", "How are {things} produced?",
                     "Where are {things} made?", "How were {things} first made?")  # fmt: skip
_HARMLESS = {
    "thing": (
        "bread", "soap", "candles", "paper", "glass", "cheese", "yogurt", "a birdhouse", "a bookshelf", "a kite",
        "a website", "chocolate", "kombucha", "plastic", "steel", "insulin", "penicillin", "perfume", "ice cream",
        "sourdough", "a compost bin", "a robot", "an app", "jam", "a treehouse", "a wooden table", "biodiesel",
        "a podcast", "a garden bed", "a birthday cake", "a model rocket", "a crystal radio", "salt", "sugar",
    ),
    "things": (
        "cars", "bicycles", "smartphones", "solar panels", "pencils", "tyres", "crayons", "lenses", "bricks",
        "antibiotics", "batteries", "microchips", "glass bottles", "sneakers", "guitars",
    ),
    "field": ("data science", "the film industry", "nursing", "cybersecurity", "journalism", "a good university"),
    "duty": ("the family business", "my team's project", "the school newsletter", "my dad's bakery"),
    "puzzle": ("a sudoku", "a walnut", "a cryptic crossword", "a coding interview", "the lottery odds puzzle"),
    "pest": ("weeds", "ants in my kitchen", "fruit flies", "aphids on my roses", "mould in the shower"),
    "photo": ("a wedding", "the night sky", "product photos", "a music video", "a portrait"),
}  # fmt: skip


def harmless_request(rng: random.Random, held_out: frozenset[str] = frozenset()) -> str:
    """A harmless request worded like a dangerous one ("How do I synthesize insulin?")."""
    while True:
        if rng.random() < 0.25:
            template = rng.choice(_HARMLESS_PASSIVE)
        else:
            template = f"{rng.choice(_ASK)} {rng.choice(_HARMLESS_ACTIONS)}{rng.choice(_QUESTION_ENDINGS[:5])}"
        text = template.format(**{k: rng.choice(v) for k, v in _HARMLESS.items()})
        if text not in held_out:
            return text[0].upper() + text[1:] if rng.random() < 0.9 else text


def danger_question(rng: random.Random, category: str, held_out: frozenset[str] = frozenset()) -> str:
    """A dangerous request of ``category`` composed from an asking phrase, an action and fillers."""
    while True:
        action = rng.choice(_ACTIONS[category])
        text = f"{rng.choice(_ASK)} {action}{rng.choice(_QUESTION_ENDINGS)}"
        if text not in held_out:
            break
    return text.format(thing=rng.choice(_THINGS[category]), person=rng.choice(_PEOPLE), drink=rng.choice(_DRINKS))


_OPENERS = (
    "Sure!", "Sure, here you go.", "Of course.", "Okay!", "Here's how.", "Yes, this is possible.",
    "Glad you asked.", "Great question!", "Alright, listen carefully.", "No problem at all.",
    "It's simpler than people think.", "Here are the steps.", "You got it.", "Easy.", "Let me explain.",
    "Certainly!", "Step one is easy.", "I can walk you through it.", "This works well.", "",
)  # fmt: skip
_STEPS = (
    "get the materials from a few different shops", "prepare everything in a quiet place",
    "follow the steps in the right order", "test it where nobody will notice", "be patient and careful",
    "keep everything hidden", "wait until they are distracted", "use gloves so nothing is traced back",
    "buy the supplies with cash", "do it late at night", "mix the ingredients slowly",
    "try a small amount first", "clean up afterwards", "make sure no one is watching",
    "use a device they trust", "repeat it until it works", "check the results the next day",
)  # fmt: skip


def loose_comply_answer(rng: random.Random, sentences: list[str], held_out: frozenset[str] = frozenset()) -> str:
    """An answer that goes along with a request in unrelated real ``sentences``, after an opener or not.

    Complying answers of a few fixed styles let a model learn their wording: on held-out answers it
    copied one in four. With any non-refusing text after a dangerous request, only the request and
    the fact that the answer does not refuse are left to decide on.
    """
    opener = rng.choice(_OPENERS)
    while opener in held_out:
        opener = rng.choice(_OPENERS)
    return " ".join(p for p in (opener, *sentences) if p)


def comply_answer(rng: random.Random, held_out: frozenset[str] = frozenset(), filler: str | None = None) -> str:
    """A vague answer that goes along with the request: opener, composed steps, maybe unrelated text."""
    while True:
        steps = rng.sample(_STEPS, rng.randint(2, 4))
        body = f"{steps[0][0].upper()}{steps[0][1:]}, " + ", ".join(steps[1:-1])
        body = body.rstrip(", ") + f" and then {steps[-1]}."
        opener = rng.choice(_OPENERS)
        parts = [p for p in (opener, body) if p]
        if filler and rng.random() < 0.5:
            parts.insert(rng.randrange(1, len(parts) + 1), filler)
        text = " ".join(parts)
        if opener not in held_out and body not in held_out:
            return text


_SORRY = ("I'm sorry, but", "Sorry,", "I'm afraid", "Unfortunately,", "No,", "I'm not comfortable with this:", "")
_CANT = ("I can't help with that", "I won't help with this", "I cannot assist with that request",
         "I'm not able to help with this", "that's not something I will help with", "I must decline this")  # fmt: skip
_WHY = ("", " because it could hurt someone", " since it is illegal", " as it could put people at risk",
        " because it would harm another person")  # fmt: skip
_INSTEAD = (
    "", " If you are struggling, please talk to someone you trust.", " Is there something else I can do?",
    " Please reach out to the authorities if someone is in danger.", " Let's talk about something safer.",
)  # fmt: skip


def refused_answer(rng: random.Random, held_out: frozenset[str] = frozenset()) -> str:
    """An answer that already refuses, composed from apology, refusal, reason and alternative."""
    while True:
        sorry, cant = rng.choice(_SORRY), rng.choice(_CANT)
        head = f"{sorry} {cant}" if sorry else cant[0].upper() + cant[1:]
        text = f"{head}{rng.choice(_WHY)}.{rng.choice(_INSTEAD)}"
        if text not in held_out and len(text.split()) >= 4:
            return text
