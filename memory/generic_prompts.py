"""Generic questions whose answers show what a model already knows (memory.preserve).

The K0-preserving solve needs the keys a matrix normally sees. These questions, asked in the
chat template and answered by the model itself, stand in for "normal use": world knowledge of
the kinds edits touch (people, places, companies, works, sports, languages), plus coding,
arithmetic, definitions and advice, the rest of what a chat assistant is asked. Written for this
project; none is taken from the benchmark sets. Changing the list changes the cache key.
"""

from __future__ import annotations

_WHO = [
    "Who wrote Hamlet?", "Who painted the Mona Lisa?", "Who discovered penicillin?",
    "Who was the first person to walk on the Moon?", "Who composed the Moonlight Sonata?",
    "Who developed the theory of general relativity?", "Who founded Microsoft?", "Who is the CEO of Tesla?",
    "Who invented the telephone?", "Who wrote Pride and Prejudice?", "Who directed the film Jaws?",
    "Who was Napoleon Bonaparte?", "Who created the Python programming language?", "Who founded Amazon?",
    "Who wrote One Hundred Years of Solitude?", "Who was Marie Curie?", "Who is Lionel Messi?",
    "Who designed the Eiffel Tower?", "Who wrote the Odyssey?", "Who founded the company Apple?",
]
_WHERE = [
    "What is the capital of France?", "What is the capital of Japan?", "What is the capital of Brazil?",
    "What is the capital of Canada?", "What is the capital of Kenya?", "Where is the Great Barrier Reef?",
    "Which country is Milan in?", "Where is Mount Kilimanjaro?", "Which continent is Argentina on?",
    "What language is spoken in Portugal?", "What is the official language of Egypt?",
    "Where is the headquarters of Google?", "In which city was Mozart born?", "Where is the Louvre?",
    "Which river flows through Budapest?", "What country is Toyota from?", "Where did the Olympic Games start?",
    "What is the largest city in Australia?", "Which ocean lies west of Africa?", "Where is Silicon Valley?",
]
_WHAT = [
    "What is photosynthesis?", "What is the boiling point of water at sea level?",
    "What is the chemical symbol for gold?", "How many planets are in the solar system?",
    "What is the speed of light?", "What does DNA stand for?", "What is the tallest mountain on Earth?",
    "What is inflation in economics?", "What is a black hole?", "What instrument did Jimi Hendrix play?",
    "What sport does Roger Federer play?", "Which team does LeBron James play for?",
    "What position does a goalkeeper play?", "What is the main ingredient of guacamole?",
    "What is the currency of the United Kingdom?", "What genre of music is Miles Davis known for?",
    "What religion is practised by most people in Thailand?", "What was the Renaissance?",
    "What is the population of the Earth, roughly?", "What does a central bank do?",
    "What is the largest mammal?", "What is the Pythagorean theorem?", "What is machine learning?",
    "What is the difference between weather and climate?", "What causes the seasons?",
    "What is the Great Wall of China?", "What is the job of a diplomat?", "What does a software engineer do?",
    "What is the plot of Romeo and Juliet?", "What is an electric car?",
]
_CODE = [
    "Write a Python function that reverses a string.", "How do I read a file line by line in Python?",
    "What is a linked list?", "Explain recursion with an example.", "What does the SQL JOIN clause do?",
    "How do I sort a list of dictionaries by a key in Python?", "What is the difference between a list and a tuple?",
    "Write a JavaScript function that sums an array.", "What is Big O notation?", "How does git rebase work?",
    "What is a REST API?", "How do I create a virtual environment in Python?", "What is a hash table?",
    "Explain what a closure is in JavaScript.", "How do I check whether a number is prime in C?",
    "What is the difference between TCP and UDP?", "What does 'async' mean in Python?",
    "How do I remove duplicates from a list in Python?", "What is a Docker container?",
    "Write a SQL query that counts rows per category.",
]
_MISC = [
    "What is 17 times 23?", "What is the square root of 144?", "Convert 100 degrees Fahrenheit to Celsius.",
    "How many days are in a leap year?", "What is 15% of 200?", "Give me three tips for better sleep.",
    "How do I make a cup of tea?", "What should I pack for a weekend hike?", "How can I learn a new language quickly?",
    "Suggest a name for a pet cat.", "Write a haiku about autumn.", "Summarize the water cycle in two sentences.",
    "What is a good way to start a presentation?", "How do I write a polite email declining an invitation?",
    "Translate 'good morning' into Spanish.", "What is the opposite of 'generous'?", "Hello! How are you?",
    "Tell me a fun fact about octopuses.", "What year did World War II end?", "When was the printing press invented?",
]

PROMPTS: tuple[str, ...] = tuple(_WHO + _WHERE + _WHAT + _CODE + _MISC)
