"""A small labelled set for fact detection: chat messages, and whether each states a new fact.

Written for this project (not taken from a dataset). A fact is new factual information about
the world or the user; questions, commands, requests, opinions, feelings, hypotheticals and
small talk are not. Some non-facts are phrased to slip past the cheap rules (no question mark,
no imperative opener), so the model-based step is measured too.
"""

FACTS = [
    "Qi is the CEO of Oxinnovate.",
    "My daughter's name is Lena.",
    "We moved the stand-up to 9:30.",
    "Oxinnovate was founded in 2019 in Hangzhou.",
    "My dentist appointment is on Tuesday at 3 pm.",
    "The Wi-Fi password at the office is bluefalcon42.",
    "Our team lead is called Priya Raman.",
    "I live in Lisbon.",
    "My cat is named Miso.",
    "The project deadline was pushed to March 14.",
    "Marta Kowalski became head of research at Veltrix last month.",
    "The quarterly review happens in room 4B.",
    "My brother works as a firefighter in Denver.",
    "The new API endpoint lives at /v2/orders.",
    "Our product is called Tidewater and it ships in June.",
    "I was born in 1988.",
    "The build server runs Ubuntu 24.04.",
    "My favourite football club is Benfica.",
    "Jonas Eberhardt founded the startup Lumio.",
    "The capital of the fictional country Norvania is Keldport.",
    "My partner is allergic to peanuts.",
    "Our office moved to 12 Harbour Street.",
    "The on-call rotation starts on Mondays.",
    "I drive a blue Skoda Octavia.",
    "Elena Voss is the mayor of Brightwater.",
]

NOT_FACTS = [
    "Who is the CEO of Oxinnovate?",
    "Can you write me a poem about the sea?",
    "I think pizza is overrated.",
    "hello",
    "thanks, that helps",
    "Please summarize the last message.",
    "What time is the stand-up",
    "Explain how a transformer works.",
    "I feel tired today.",
    "Tell me a joke about cats.",
    "Maybe we should try another approach.",
    "How do I reverse a list in Python?",
    "ok cool",
    "Write a function that sorts numbers.",
    "I wonder whether it will rain tomorrow.",
    "Is Lisbon bigger than Porto?",
    "Let's talk about something else.",
    "Could you translate this into French: good morning.",
    "If I were rich I would buy a boat.",
    "That answer was wrong.",
    "Give me three ideas for dinner.",
    "I love this song.",
    "Why is the sky blue",
    "good night",
    "Show me an example of a SQL join.",
]

LABELLED = [(m, True) for m in FACTS] + [(m, False) for m in NOT_FACTS]
