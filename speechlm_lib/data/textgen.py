"""English sentences full of rare names, each with an aligned German translation.

Every sentence comes from a template written twice, in English and German, with
the same slots::

    "{person} works for {company} in {city}."
    "{person} arbeitet für {company} in {city}."

Entity slots (people, companies, places, streets, products) are filled from
Faker in several locales (Polish, Italian, Dutch, ... names are rare words for
an English recogniser), transliterated to plain ASCII letters and copied into
both languages. Ordinary slots (weekdays, months, numbers, well-known cities)
are translated with small dictionaries. Numbers are always spelled as words.

`Sentence.keywords` lists the entity words that are not common English words:
the biasing keywords of a later stage. With ``holdout="train"`` /
``holdout="test"`` the entity words are split into two disjoint pools (by a
stable hash), so names in test sentences never occur in training text.

Everything is deterministic: sentence ``i`` depends only on ``(seed, i)``.
"""
from __future__ import annotations

import random
import re
import unicodedata
import zlib
from dataclasses import dataclass, field
from functools import lru_cache

from faker import Faker
from faker.providers.address.en_US import Provider as _EnglishAddresses
from faker.providers.lorem.en_US import Provider as _EnglishLorem
from faker.providers.person.en_US import Provider as _EnglishNames

VERSION = 2  # bump when generated sentences or keywords change (corpora built earlier are then refreshed)
DEFAULT_LOCALES = ("en_US", "en_GB", "de_DE", "pl_PL", "it_IT", "fr_FR", "nl_NL")

# (English, German) pairs sharing slots. `first2`, `city2`, ... are second draws of the same kind.
TEMPLATES: list[tuple[str, str]] = [
    ("{person} works for {company} in {city}.", "{person} arbeitet für {company} in {city}."),
    ("Please call {person} before {day} and ask about the new contract.",
     "Bitte ruf {person} vor {day} an und frag nach dem neuen Vertrag."),
    ("Did {first} already send the report to {company}?", "Hat {first} den Bericht schon an {company} geschickt?"),
    ("The meeting with {company} moved to {day}.", "Das Treffen mit {company} wurde auf {day} verschoben."),
    ("{company} opened a new office in {city} in {month}.",
     "{company} hat im {month} ein neues Büro in {city} eröffnet."),
    ("Our train to {city} leaves at {hour} o'clock.", "Unser Zug nach {city} fährt um {hour} Uhr ab."),
    ("{first} bought a {product} for {num} euros.", "{first} hat ein {product} für {num} Euro gekauft."),
    ("Have you tried the new {product} from {company}?", "Hast du das neue {product} von {company} ausprobiert?"),
    ("{person} will present the {product} in {city} on {day}.",
     "{person} stellt das {product} am {day} in {city} vor."),
    ("I met {person} at the conference in {city}.", "Ich habe {person} auf der Konferenz in {city} getroffen."),
    ("Send the invoice to {company} by {day}.", "Schick die Rechnung bis {day} an {company}."),
    ("Does {person} still run {company} from the office in {city}?", "Leitet {person} {company} noch vom Büro in {city} aus?"),
    ("{company} and {company2} signed the agreement on {day}.",
     "{company} und {company2} haben den Vertrag am {day} unterschrieben."),
    ("The package from {city} finally arrived this morning.", "Das Paket aus {city} ist heute Morgen endlich angekommen."),
    ("Tell {first} that the {product} is ready for the demo.", "Sag {first}, dass das {product} für die Vorführung bereit ist."),
    ("We are flying to {city} in {month}.", "Wir fliegen im {month} nach {city}."),
    ("Doctor {surname} has moved the appointment to {day}.", "Doktor {surname} hat den Termin auf {day} verlegt."),
    ("Professor {surname} from {city} gave a talk about speech recognition.",
     "Professor {surname} aus {city} hat einen Vortrag über Spracherkennung gehalten."),
    ("How much does the {product} cost in the shop near {city}?", "Wie viel kostet das {product} im Laden bei {city}?"),
    ("{person} is calling from {company} about the delivery.", "{person} ruft wegen der Lieferung von {company} an."),
    ("The {product} sold out in {city} within {num} days.",
     "Das {product} war in {city} innerhalb von {num} Tagen ausverkauft."),
    ("My sister lives in a small house near {city}.", "Meine Schwester wohnt in einem kleinen Haus in der Nähe von {city}."),
    ("Can you book a table for {num} people on {day}?",
     "Kannst du für {day} einen Tisch für {num} Personen reservieren?"),
    ("{first} and {first2} founded {company} together.", "{first} und {first2} haben {company} zusammen gegründet."),
    ("The next stop is {city}, where this train ends.", "Der nächste Halt ist {city}, wo dieser Zug endet."),
    ("{company} is hiring {num} new engineers in {city}.", "{company} stellt in {city} {num} neue Ingenieure ein."),
    ("Did you read the long email from {person} about the budget?",
     "Hast du die lange E-Mail von {person} über das Budget gelesen?"),
    ("Our new address is {street} {num}, {city}.", "Unsere neue Adresse ist {street} {num}, {city}."),
    ("{person} lives at {street} {num} in {city}.", "{person} wohnt in {city}, {street} {num}."),
    ("Why did {company} cancel the order for {num} machines?",
     "Warum hat {company} die Bestellung über {num} Maschinen storniert?"),
    ("The {product} update will be released on {day}.", "Das Update für das {product} erscheint am {day}."),
    ("{person} won the chess tournament in {city}.", "{person} hat das Schachturnier in {city} gewonnen."),
    ("We visited {city} and {city2} last summer.", "Wir haben letzten Sommer {city} und {city2} besucht."),
    ("Could you spell the name {surname} for me?", "Könntest du mir den Namen {surname} buchstabieren?"),
    ("The flight from {city} is delayed by {num} hours.", "Der Flug aus {city} hat {num} Stunden Verspätung."),
    ("{first} prefers the {product} to the {product2}.", "{first} mag das {product} lieber als das {product2}."),
    ("Good morning, this is {person} from {company}.", "Guten Morgen, hier ist {person} von {company}."),
    ("{company} reported strong sales in {month}.", "{company} meldete im {month} starke Umsätze."),
    ("I will meet {first} at the station in {city} at {hour} o'clock.",
     "Ich treffe {first} um {hour} Uhr am Bahnhof in {city}."),
    ("Who runs {company} now that {person} has retired?",
     "Wer leitet jetzt {company}, nachdem {person} in Rente gegangen ist?"),
    ("{person} was born in {city} and moved to {city2} as a child.",
     "{person} wurde in {city} geboren und zog als Kind nach {city2}."),
    ("The conference in {city} starts on {day}.", "Die Konferenz in {city} beginnt am {day}."),
    ("Please forward this message to {person}.", "Bitte leite diese Nachricht an {person} weiter."),
    ("{company} bought {company2} for an undisclosed sum.",
     "{company} hat {company2} für eine unbekannte Summe gekauft."),
    ("Is the {product} available in {city}?", "Ist das {product} in {city} erhältlich?"),
    ("We need {num} more copies of the {product} manual.",
     "Wir brauchen noch {num} Exemplare der Anleitung für das {product}."),
    ("{first} drove from {city} to {city2} in one day.", "{first} ist an einem Tag von {city} nach {city2} gefahren."),
    ("Thank you, {first}, the package arrived on {day}.", "Danke, {first}, das Paket ist am {day} angekommen."),
    ("The weather in {city} was cold and rainy.", "Das Wetter in {city} war kalt und regnerisch."),
    ("Which team does {person} play for?", "Für welche Mannschaft spielt {person}?"),
    ("{person} joined {company} in {month}.", "{person} ist im {month} zu {company} gekommen."),
    ("Remind me to call {company} on {day} at {hour} o'clock.",
     "Erinnere mich daran, {company} am {day} um {hour} Uhr anzurufen."),
    ("The {product} battery lasts about {num} hours.", "Der Akku des {product} hält etwa {num} Stunden."),
    ("{first}'s new phone is a {product}.", "Das neue Telefon von {first} ist ein {product}."),
    ("Have you ever been to {city} during the summer festival?",
     "Warst du schon einmal während des Sommerfestes in {city}?"),
    ("{person} and {person2} are the new owners of {company}.",
     "{person} und {person2} sind die neuen Eigentümer von {company}."),
    ("The museum in {city} is closed on {day}.", "Das Museum in {city} ist am {day} geschlossen."),
    ("Let's ask {first} what {company} thinks.", "Lass uns {first} fragen, was {company} denkt."),
    ("{person} represents {company} in court.", "{person} vertritt {company} vor Gericht."),
    ("Every {day}, {first} runs along the river in {city}.", "Jeden {day} läuft {first} in {city} am Fluss entlang."),
    ("Why is the {product} so expensive in {city}?", "Warum ist das {product} in {city} so teuer?"),
    ("{company} will move its headquarters to {city} in {month}.",
     "{company} verlegt im {month} den Firmensitz nach {city}."),
    ("Hello {first}, are you coming to {city} on {day}?", "Hallo {first}, kommst du am {day} nach {city}?"),
    ("The contract with {company} ends in {month}.", "Der Vertrag mit {company} endet im {month}."),
    ("{person} recommended the {product}.", "{person} hat das {product} empfohlen."),
    ("Okay, I will tell {first}.", "Okay, ich sage es {first}."),
    ("The {product} comes in {num} colours.", "Das {product} gibt es in {num} Farben."),
    ("After the merger, {company} changed its name to {company2}.",
     "Nach der Fusion änderte {company} den Namen in {company2}."),
    ("Is it true that {person} is leaving {company}?", "Stimmt es, dass {person} {company} verlässt?"),
    ("{surname} asked whether the office in {city} is open on {day}.",
     "{surname} hat gefragt, ob das Büro in {city} am {day} geöffnet ist."),
    ("According to {person}, {company} will double its staff in {city} by the end of {month}.",
     "Laut {person} wird {company} das Personal in {city} bis Ende {month} verdoppeln."),
    ("The train from {city} to {city2} was cancelled, so {first} took a taxi.",
     "Der Zug von {city} nach {city2} fiel aus, also nahm {first} ein Taxi."),
    ("We should invite {person} and {person2} to the workshop on {day}.",
     "Wir sollten {person} und {person2} zum Workshop am {day} einladen."),
    ("I heard that {company} is testing the {product} in {city} in {month}.",
     "Ich habe gehört, dass {company} das {product} im {month} in {city} testet."),
    ("Could you ask {first} whether the {product} works without an internet connection?",
     "Könntest du {first} fragen, ob das {product} ohne Internetverbindung funktioniert?"),
    ("The reviewers at {company} called the {product} the best phone of the year.",
     "Die Tester bei {company} nannten das {product} das beste Telefon des Jahres."),
    ("{first} spent {num} days in {city} and still did not see the old castle.",
     "{first} war {num} Tage in {city} und hat die alte Burg trotzdem nicht gesehen."),
    ("When does the last bus to {city} leave on {day} evening?", "Wann fährt am {day}abend der letzte Bus nach {city}?"),
    ("If the weather is good, we will drive to {city} on {day}.",
     "Wenn das Wetter gut ist, fahren wir am {day} nach {city}."),
    ("{person} told the reporters that {company} has no plans to leave {city}.",
     "{person} sagte den Reportern, dass {company} nicht vorhat, {city} zu verlassen."),
]

DAYS = dict(zip("Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split(),
                "Montag Dienstag Mittwoch Donnerstag Freitag Samstag Sonntag".split()))
MONTHS = dict(zip("January February March April May June July August September October November December".split(),
                  "Januar Februar März April Mai Juni Juli August September Oktober November Dezember".split()))
NUMBERS = dict(zip("two three four five six seven eight nine ten eleven twelve fifteen twenty thirty fifty".split(),
                   "zwei drei vier fünf sechs sieben acht neun zehn elf zwölf fünfzehn zwanzig dreißig fünfzig".split()))
HOURS = {k: NUMBERS[k] for k in "two three four five six seven eight nine ten eleven twelve".split()}
FILLERS = {"day": DAYS, "month": MONTHS, "num": NUMBERS, "hour": HOURS}  # translated slot fillers
KNOWN_CITIES = {"Munich": "München", "Cologne": "Köln", "Vienna": "Wien", "Warsaw": "Warschau", "Milan": "Mailand",
                "Rome": "Rom", "Venice": "Venedig", "Naples": "Neapel", "Prague": "Prag", "Brussels": "Brüssel",
                "Copenhagen": "Kopenhagen", "Lisbon": "Lissabon", "Zurich": "Zürich", "Geneva": "Genf",
                "Florence": "Florenz", "Nuremberg": "Nürnberg", "The Hague": "Den Haag", "Moscow": "Moskau"}
INDUSTRIES = ("Logistics", "Systems", "Analytics", "Robotics", "Foods", "Textiles", "Pharma", "Energy", "Motors",
              "Software", "Labs", "Media", "Capital", "Consulting", "Instruments", "Optics", "Airlines", "Bank")
MODELS = ("Pro", "Max", "Mini", "Air", "Plus", "Ultra", "Go", "Lite", "One", "Two", "Three", "Five", "Nine")
_ONSETS = "b c d f g k l m n p r s t v z br cr dr fl gr kr pl st tr vr sk sl zv".split()
_VOWELS = "a e i o u a e o ai ei ou".split()
_CODAS = ["", "", "", "n", "r", "l", "x", "s", "m", "nt", "rk"]
_PARTICLES = {"van", "der", "den", "de", "di", "da", "del", "della", "la", "le", "les", "sur", "von", "zu", "het",
              "ter", "ten", "in", "on", "and", "of", "the", "lo", "saint", "sainte", "san", "santa", "sankt"}
_TRANSLIT = str.maketrans({"ł": "l", "Ł": "L", "ß": "ss", "ø": "o", "Ø": "O", "æ": "ae", "Æ": "Ae", "œ": "oe",
                           "Œ": "Oe", "đ": "d", "Đ": "D", "ı": "i", "’": "'", "-": " "})
_SLOT = re.compile(r"\{(\w+?)(\d?)\}")


def ascii_name(text: str) -> str:
    """Transliterate a name to plain ASCII letters: ``'Łukasz Zięcik-Wróbel'`` -> ``'Lukasz Ziecik Wrobel'``."""
    text = unicodedata.normalize("NFKD", text.translate(_TRANSLIT))
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = re.sub(r"[^A-Za-z' ]", " ", text)
    return " ".join(w.strip("'") for w in text.split() if w.strip("'"))  # keep only inner apostrophes


def _frequent(names: dict, n: int = 100) -> set[str]:
    """The `n` most frequent names of a Faker {name: frequency} table, lower case."""
    return {k.lower() for k, _ in sorted(names.items(), key=lambda kv: -kv[1])[:n]}


def common_words() -> frozenset[str]:
    """Lower-case common English words: Faker's English word list, frequent US first and last
    names, English street suffixes and city prefixes, template words, fillers, particles."""
    words = {w.lower() for w in _EnglishLorem.word_list}
    for names in (_EnglishNames.first_names_male, _EnglishNames.first_names_female, _EnglishNames.last_names):
        words |= _frequent(names)
    for en, _ in TEMPLATES:
        words |= set(re.findall(r"[a-z']+", _SLOT.sub(" ", en).lower()))
    groups = (DAYS, MONTHS, NUMBERS, KNOWN_CITIES, INDUSTRIES, MODELS, _PARTICLES,
              _EnglishAddresses.street_suffixes, _EnglishAddresses.city_prefixes)
    for group in groups:
        words |= {w.lower() for item in group for w in item.split()}
    return frozenset(words)


_COMMON = common_words()


def rare_words(entity: str) -> list[str]:
    """The words of an entity value that are not common English words (length >= 2)."""
    return [w for w in entity.split() if len(w) >= 2 and w.lower().strip("'") not in _COMMON]


@dataclass
class Sentence:
    """One generated sentence and its German translation."""

    text: str  # English sentence (ASCII letters, spaces, apostrophes, light punctuation; no digits)
    translation: str  # German sentence from the same template with the same entities
    keywords: list[str] = field(default_factory=list)  # rare entity words in `text`, in order of appearance
    template_id: int = 0  # index into TEMPLATES


class SentenceGenerator:
    """Deterministic sentence source: ``sample(i)`` depends only on ``(seed, i)``.

    `holdout` splits entity words into two disjoint pools by a stable hash:
    "train" draws from about 80 % of them, "test" from the other 20 %, None from all.
    """

    def __init__(self, seed: int | str = 0, locales: tuple[str, ...] = DEFAULT_LOCALES,
                 holdout: str | None = None, holdout_share: float = 0.2):
        if holdout not in (None, "train", "test"):
            raise ValueError(f"holdout must be None, 'train' or 'test', not {holdout!r}")
        self.seed, self.locales, self.holdout, self.holdout_share = seed, tuple(locales), holdout, holdout_share
        self.fakers = {loc: Faker(loc) for loc in self.locales}

    def _allowed(self, value: str) -> bool:
        """Whether every rare word of `value` belongs to this generator's holdout pool."""
        if self.holdout is None:
            return True
        for w in rare_words(value):
            in_test = zlib.crc32(w.lower().encode()) % 1000 < self.holdout_share * 1000
            if in_test != (self.holdout == "test"):
                return False
        return True

    def _draw(self, rng: random.Random, kind: str) -> str:
        """One ASCII entity value of `kind`, respecting the holdout pool."""
        for _ in range(200):
            value = self._raw(rng, kind)
            if self._allowed(value):
                return value
        raise RuntimeError(f"could not draw a {kind} from holdout pool {self.holdout!r}")

    def _raw(self, rng: random.Random, kind: str) -> str:
        """One entity value of `kind` (a key of `ENTITY_MAKERS`) from a random locale."""
        if kind not in ENTITY_MAKERS:
            raise KeyError(f"unknown entity slot {kind!r}")
        fake = self.fakers[rng.choice(self.locales)]
        fake.seed_instance(rng.getrandbits(32))
        return ENTITY_MAKERS[kind](rng, fake)

    def _fill(self, rng: random.Random, kind: str) -> tuple[str, str, bool]:
        """(English value, German value, is_entity) for one slot."""
        if kind in FILLERS:
            return (*rng.choice(list(FILLERS[kind].items())), False)
        if kind == "city" and rng.random() < 0.15:  # now and then a well-known city with a German name
            return (*rng.choice(list(KNOWN_CITIES.items())), False)
        value = self._draw(rng, kind)
        return value, value, True

    def sample(self, index: int | random.Random) -> Sentence:
        """Sentence number `index` (or one drawn from a given `random.Random`)."""
        rng = index if isinstance(index, random.Random) else random.Random(f"{self.seed}:{index}")
        template_id = rng.randrange(len(TEMPLATES))
        en, de = TEMPLATES[template_id]
        values_en, values_de, keywords = {}, {}, []
        for m in _SLOT.finditer(en):
            key = m.group(1) + m.group(2)
            if key in values_en:
                continue
            v_en, v_de, is_entity = self._fill(rng, m.group(1))
            values_en[key], values_de[key] = v_en, v_de
            if is_entity:
                keywords += [w for w in rare_words(v_en) if w not in keywords]
        text = en.format(**values_en)
        return Sentence(text=text[:1].upper() + text[1:], translation=de.format(**values_de),
                        keywords=keywords, template_id=template_id)


def coined_word(rng: random.Random) -> str:
    """A pronounceable made-up brand name of two or three syllables, e.g. ``'Velkora'``."""
    n = rng.choice((2, 2, 3))
    word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(n)) + rng.choice(_CODAS)
    return word.capitalize()


def _company(rng: random.Random, fake: Faker) -> str:
    """'Kowalski Logistics', 'Rossi and Moreau' or 'Velkora Optics'."""
    style = rng.random()
    if style < 0.5:
        return f"{ascii_name(fake.last_name())} {rng.choice(INDUSTRIES)}"
    if style < 0.75:
        return f"{ascii_name(fake.last_name())} and {ascii_name(fake.last_name())}"
    return f"{coined_word(rng)} {rng.choice(INDUSTRIES)}"


@lru_cache(maxsize=None)
def _sorted_cities(locale: str) -> tuple[str, ...]:
    """A locale's city list in a fixed order (Faker's it_IT list comes from a set: its order changes
    with every process's hash seed, which would make sentences differ between runs)."""
    fake = Faker(locale)
    for provider in fake.get_providers():
        if type(provider).__module__.startswith("faker.providers.address") and hasattr(provider, "cities"):
            return tuple(sorted(set(provider.cities)))
    return ()


def _city(rng: random.Random, fake: Faker) -> str:
    cities = _sorted_cities(fake.locales[0])
    return ascii_name(fake.random_element(cities) if cities else fake.city())


def _street(rng: random.Random, fake: Faker) -> str:
    name = ascii_name(fake.street_name())
    return name[:1].upper() + name[1:]


def _product(rng: random.Random, fake: Faker) -> str:
    return f"{coined_word(rng)} {rng.choice(MODELS)}" if rng.random() < 0.6 else coined_word(rng)


# Entity slot -> maker(rng, faker of a random locale) -> ASCII value.
ENTITY_MAKERS = {
    "person": lambda rng, fake: ascii_name(f"{fake.first_name()} {fake.last_name()}"),
    "first": lambda rng, fake: ascii_name(fake.first_name()),
    "surname": lambda rng, fake: ascii_name(fake.last_name()),
    "city": _city,
    "street": _street,
    "company": _company,
    "product": _product,
}


def generate(n: int, seed: int | str = 0, **kwargs) -> list[Sentence]:
    """The first `n` sentences of ``SentenceGenerator(seed, **kwargs)``."""
    gen = SentenceGenerator(seed, **kwargs)
    return [gen.sample(i) for i in range(n)]
