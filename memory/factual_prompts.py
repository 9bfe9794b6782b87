"""Factual prompts about many subjects: the positions where a model answers a question of fact.

The preserving metric (memory.preserve) keeps the update away from the keys a matrix normally
sees. Most of those keys are ordinary text; the keys that matter for an edit's neighbours are
rarer: the position that answers a question of fact, which at the upper layers says "this
relation is being answered" more than which subject it is asked of (memory.anchors). So the
metric also gets the keys at the last position of these prompts: relations of people, places and
organizations or works, each asked of every subject of its kind, both as a plain completion
("Albert Einstein was born in") and as a chat question ("Where was Albert Einstein born?").
They ship with the project (no generation, no data download) and were written for it; they share
nothing with the benchmark sets beyond being about well-known subjects.
"""

from __future__ import annotations

PEOPLE = (
    "Albert Einstein", "Marie Curie", "William Shakespeare", "Leonardo da Vinci", "Nelson Mandela", "Frida Kahlo",
    "Isaac Newton", "Mahatma Gandhi", "Ada Lovelace", "Pablo Picasso", "Wolfgang Amadeus Mozart", "Serena Williams",
    "Lionel Messi", "Queen Victoria", "Charles Darwin", "Jane Austen", "Barack Obama", "Akira Kurosawa",
    "Angela Merkel", "Vladimir Nabokov", "Miles Davis", "Jimi Hendrix", "Haruki Murakami", "Gabriel Garcia Marquez",
    "Simone de Beauvoir", "Ludwig van Beethoven", "Rafael Nadal", "Usain Bolt", "Steve Jobs", "Bill Gates",
    "Elvis Presley", "Bob Dylan", "Tom Hanks", "Meryl Streep", "Ernest Hemingway", "Vincent van Gogh",
    "Galileo Galilei", "Nikola Tesla", "Johann Sebastian Bach", "Diego Maradona",
)
PLACES = (
    "Paris", "Tokyo", "Cairo", "Brazil", "Canada", "Australia", "Istanbul", "Norway", "Kenya", "Mumbai", "Lima",
    "Toronto", "Vienna", "Finland", "Chile", "Nairobi", "Bavaria", "Sicily", "Quebec", "Manila", "Seoul", "Peru",
    "Oslo", "Morocco", "Iceland", "Texas", "Bangkok", "Prague", "Ghana", "Scotland",
)
ORGANIZATIONS_AND_WORKS = (
    "Toyota", "Microsoft", "the Red Cross", "Harvard University", "UNESCO", "Nokia", "Volkswagen", "the BBC",
    "Real Madrid", "Samsung", "Interpol", "IKEA", "Sony", "Nintendo", "BMW", "Airbus", "Google", "Apple", "Ferrari",
    "Honda", "Intel", "Siemens", "the Beatles", "Star Wars", "Linux", "Python", "Windows 95", "the iPhone", "Hamlet",
    "Don Quixote",
)

# (plain completion, chat question) per relation; {} is the subject.
PERSON_RELATIONS = (
    ("{} was born in", "Where was {} born?"),
    ("{} is a citizen of", "What country is {} a citizen of?"),
    ("The native language of {} is", "What is the native language of {}?"),
    ("{} plays the", "What instrument does {} play?"),
    ("{} works in the field of", "What field does {} work in?"),
    ("{} died in", "Where did {} die?"),
    ("The profession of {} is", "What is the profession of {}?"),
    ("{} is a member of", "What organization is {} a member of?"),
    ("{} was educated at", "Where was {} educated?"),
    ("{} speaks", "What language does {} speak?"),
    ("The religion of {} is", "What religion does {} follow?"),
    ("{} plays for", "Which team does {} play for?"),
    ("{} is famous for", "What is {} famous for?"),
    ("{} was employed by", "Who employed {}?"),
)
PLACE_RELATIONS = (
    ("{} is located in", "Where is {} located?"),
    ("The capital of {} is", "What is the capital of {}?"),
    ("The official language of {} is", "What is the official language of {}?"),
    ("{} is part of the continent of", "Which continent is {} on?"),
    ("{} shares a border with", "What does {} share a border with?"),
    ("The currency of {} is", "What is the currency of {}?"),
    ("{} is a twin city of", "What is a twin city of {}?"),
    ("The head of government of {} is", "Who heads the government of {}?"),
)
ORGANIZATION_RELATIONS = (
    ("{} was founded in", "When was {} founded?"),
    ("{} is headquartered in", "Where is {} headquartered?"),
    ("{} was created by", "Who created {}?"),
    ("{} is owned by", "Who owns {}?"),
    ("{} was developed by", "Who developed {}?"),
    ("The original language of {} is", "What is the original language of {}?"),
    ("{} is produced by", "Who produces {}?"),
    ("{} was released by", "Who released {}?"),
)
KINDS = ((PEOPLE, PERSON_RELATIONS), (PLACES, PLACE_RELATIONS), (ORGANIZATIONS_AND_WORKS, ORGANIZATION_RELATIONS))


def completions() -> list[str]:
    """Every relation of every kind asked of every subject of that kind, as plain completions."""
    return [plain.format(subject) for subjects, relations in KINDS for subject in subjects for plain, _ in relations]


def questions() -> list[str]:
    """The same, as questions (in the same order)."""
    return [question.format(subject) for subjects, relations in KINDS for subject in subjects
            for _, question in relations]
