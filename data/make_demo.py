"""Write the demo data in data/demo/ (project-authored, deterministic; rerun to regenerate).

- instructions_en.jsonl  alpaca format, English, many task types
- instructions_zh.json   ShareGPT format (a JSON array), Chinese
- extra_qa.csv           question/answer CSV, both languages
- general.jsonl          OpenAI-messages general-knowledge pool + plain-text paragraphs (for replay)

Planted on purpose, so every curation stage has work to do: exact and near duplicates, junk
answers (refusals, truncations, repetition, placeholders, HTML spam, mojibake, echoes, empties) and
a few malformed lines (bad JSON, wrong types, a missing field, invalid UTF-8).
"""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent / "demo"
rng = random.Random(20261129)

CAPITALS = [
    ("France", "Paris", "Europe"), ("Japan", "Tokyo", "Asia"), ("Kenya", "Nairobi", "Africa"),
    ("Brazil", "Brasília", "South America"), ("Canada", "Ottawa", "North America"), ("Egypt", "Cairo", "Africa"),
    ("Australia", "Canberra", "Oceania"), ("Germany", "Berlin", "Europe"), ("India", "New Delhi", "Asia"),
    ("Mexico", "Mexico City", "North America"), ("Peru", "Lima", "South America"), ("Norway", "Oslo", "Europe"),
    ("Vietnam", "Hanoi", "Asia"), ("Morocco", "Rabat", "Africa"), ("Chile", "Santiago", "South America"),
    ("Spain", "Madrid", "Europe"), ("Thailand", "Bangkok", "Asia"), ("Ghana", "Accra", "Africa"),
    ("Poland", "Warsaw", "Europe"), ("Argentina", "Buenos Aires", "South America"),
]
CAPITALS_ZH = [
    ("法国", "巴黎", "欧洲"), ("日本", "东京", "亚洲"), ("肯尼亚", "内罗毕", "非洲"), ("巴西", "巴西利亚", "南美洲"),
    ("加拿大", "渥太华", "北美洲"), ("埃及", "开罗", "非洲"), ("澳大利亚", "堪培拉", "大洋洲"), ("德国", "柏林", "欧洲"),
    ("印度", "新德里", "亚洲"), ("墨西哥", "墨西哥城", "北美洲"), ("秘鲁", "利马", "南美洲"), ("挪威", "奥斯陆", "欧洲"),
    ("越南", "河内", "亚洲"), ("西班牙", "马德里", "欧洲"), ("泰国", "曼谷", "亚洲"), ("波兰", "华沙", "欧洲"),
]
NAMES = ["Tom", "Maria", "Aisha", "Ken", "Lena", "Omar", "Priya", "Jonas", "Mei", "Carlos"]
NAMES_ZH = ["小明", "小红", "李华", "王芳", "张伟", "刘洋", "陈静", "赵磊"]
ITEMS = [("pencils", "pencil"), ("apples", "apple"), ("notebooks", "notebook"), ("tickets", "ticket"),
         ("books", "book"), ("cupcakes", "cupcake")]
ITEMS_ZH = ["铅笔", "苹果", "笔记本", "电影票", "故事书", "面包"]

TRANSLATE = [
    ("Good morning, how are you today?", "早上好，你今天怎么样？"),
    ("The library opens at nine o'clock.", "图书馆九点开门。"),
    ("Please close the window when you leave.", "你离开时请关上窗户。"),
    ("I would like a cup of green tea.", "我想要一杯绿茶。"),
    ("The train to Shanghai is delayed.", "去上海的火车晚点了。"),
    ("She has been learning to play the piano for three years.", "她学钢琴已经三年了。"),
    ("Where is the nearest subway station?", "最近的地铁站在哪里？"),
    ("This restaurant is famous for its noodles.", "这家餐厅以面条出名。"),
    ("We are planning a trip to the mountains next week.", "我们计划下周去山里旅行。"),
    ("Could you speak a little more slowly?", "你能说慢一点吗？"),
    ("The weather will be sunny tomorrow.", "明天天气晴朗。"),
    ("My brother works as a doctor in a small town.", "我哥哥在一个小镇当医生。"),
    ("Reading every day improves your vocabulary.", "每天阅读能提高你的词汇量。"),
    ("The meeting has been moved to Thursday afternoon.", "会议改到了星期四下午。"),
    ("Children should drink plenty of water in summer.", "孩子们夏天应该多喝水。"),
    ("He forgot his umbrella at the office.", "他把伞忘在办公室了。"),
]
SENTIMENT = [
    ("The battery lasts all day and the screen is gorgeous.", "positive"),
    ("I waited forty minutes and the food arrived cold.", "negative"),
    ("The hotel staff were friendly and the room was spotless.", "positive"),
    ("The app crashes every time I try to upload a photo.", "negative"),
    ("It does what it says, nothing more and nothing less.", "neutral"),
    ("Absolutely loved the concert, the band was on fire!", "positive"),
    ("The package was damaged and customer service never replied.", "negative"),
    ("The movie was two hours long.", "neutral"),
    ("This is the most comfortable pair of shoes I have ever owned.", "positive"),
    ("The instructions were confusing and two screws were missing.", "negative"),
    ("The store opens at ten on weekdays.", "neutral"),
    ("Fantastic value for the price, I would buy it again.", "positive"),
    ("The soup was bland and overpriced.", "negative"),
    ("My order arrived on Tuesday.", "neutral"),
]
SENTIMENT_ZH = [
    ("这家店的服务非常周到，菜也很好吃。", "正面"), ("快递太慢了，等了整整一个星期。", "负面"),
    ("手机电池很耐用，拍照也清晰。", "正面"), ("房间很脏，空调还坏了。", "负面"), ("会议在三楼举行。", "中性"),
    ("这部电影让我感动得流泪，强烈推荐！", "正面"), ("客服态度恶劣，再也不买了。", "负面"), ("今天是星期三。", "中性"),
    ("老师讲得很清楚，我终于听懂了。", "正面"), ("产品和描述完全不符，非常失望。", "负面"),
]
CODE = [
    ("returns the sum of a list of numbers", "sum_list", "def sum_list(numbers):\n    total = 0\n    for n in numbers:\n        total += n\n    return total"),
    ("reverses a string", "reverse_string", "def reverse_string(s):\n    return s[::-1]"),
    ("computes the factorial of n", "factorial", "def factorial(n):\n    result = 1\n    for i in range(2, n + 1):\n        result *= i\n    return result"),
    ("checks whether a number is prime", "is_prime", "def is_prime(n):\n    if n < 2:\n        return False\n    i = 2\n    while i * i <= n:\n        if n % i == 0:\n            return False\n        i += 1\n    return True"),
    ("counts the vowels in a string", "count_vowels", "def count_vowels(s):\n    return sum(1 for ch in s.lower() if ch in 'aeiou')"),
    ("returns the largest element of a list", "max_item", "def max_item(items):\n    best = items[0]\n    for x in items[1:]:\n        if x > best:\n            best = x\n    return best"),
    ("returns the first n Fibonacci numbers", "fibonacci", "def fibonacci(n):\n    seq = [0, 1]\n    while len(seq) < n:\n        seq.append(seq[-1] + seq[-2])\n    return seq[:n]"),
    ("checks whether a string is a palindrome", "is_palindrome", "def is_palindrome(s):\n    cleaned = [c.lower() for c in s if c.isalnum()]\n    return cleaned == cleaned[::-1]"),
    ("removes duplicates from a list while keeping order", "unique", "def unique(items):\n    seen = set()\n    out = []\n    for x in items:\n        if x not in seen:\n            seen.add(x)\n            out.append(x)\n    return out"),
    ("converts Celsius to Fahrenheit", "c_to_f", "def c_to_f(celsius):\n    return celsius * 9 / 5 + 32"),
    ("counts how often each word appears in a text", "word_counts", "def word_counts(text):\n    counts = {}\n    for w in text.lower().split():\n        counts[w] = counts.get(w, 0) + 1\n    return counts"),
    ("flattens a list of lists", "flatten", "def flatten(lists):\n    return [x for sub in lists for x in sub]"),
]
TOPICS = ["a rainy afternoon", "the ocean at night", "a city waking up", "an old bicycle", "the first snow",
          "a quiet library", "a lighthouse", "autumn leaves", "a busy market", "a cup of coffee"]
BRAINSTORM = [
    ("ways to reduce food waste at home", ["Plan meals for the week and shop with a list.", "Store fruit and vegetables properly so they last longer.", "Freeze leftovers in labelled portions.", "Use older ingredients first by keeping them at the front of the fridge."]),
    ("ideas for a team-building activity", ["An escape room challenge.", "A cooking class where teams prepare one course each.", "A volunteering afternoon at a local charity.", "A scavenger hunt around the neighbourhood."]),
    ("tips for staying focused while studying", ["Put your phone in another room.", "Work in 25-minute blocks with short breaks.", "Set one clear goal for each session.", "Keep water and a snack nearby so you do not get up often."]),
    ("names for a neighbourhood bakery", ["Rise & Shine", "The Daily Crumb", "Butter Lane", "Golden Crust"]),
    ("ways to save money on groceries", ["Compare unit prices instead of package prices.", "Buy store brands for staples.", "Cook larger batches and freeze portions.", "Avoid shopping when hungry."]),
    ("weekend activities for a family with young children", ["Visit a science museum with hands-on exhibits.", "Have a picnic in the park.", "Bake cookies together.", "Build a blanket fort and read stories."]),
    ("ways to make a small apartment feel bigger", ["Use mirrors to reflect light.", "Choose furniture with hidden storage.", "Keep surfaces clear.", "Paint walls in light colours."]),
    ("questions to ask at the end of a job interview", ["What does success look like in the first six months?", "How does the team share knowledge?", "What are the biggest challenges for this role?", "What are the next steps in the process?"]),
]
FORMAL = [
    ("hey, can u send me the report asap?", "Could you please send me the report at your earliest convenience?"),
    ("the meeting got cancelled cuz the boss is sick", "The meeting has been cancelled because the manager is unwell."),
    ("we gotta fix this bug before friday", "We need to resolve this defect before Friday."),
    ("thx for the help yesterday, u saved me", "Thank you for your help yesterday; it was invaluable."),
    ("i dunno if the budget is gonna be enough", "I am not certain that the budget will be sufficient."),
    ("pls tell the team the server is down again", "Please inform the team that the server is unavailable again."),
    ("sorry im late, traffic was crazy", "I apologise for my late arrival; the traffic was exceptionally heavy."),
    ("can we move the call to 3?", "Would it be possible to reschedule the call to 3 p.m.?"),
]
PARAGRAPHS = [
    ("Honeybees communicate the location of food through a 'waggle dance'. The angle of the dance relative to vertical shows the direction of the food relative to the sun, and the length of the waggle run indicates the distance. Other bees follow the dancer and then fly out to the source.",
     "Honeybees use a waggle dance whose angle shows the direction and whose length shows the distance of food."),
    ("The Great Wall of China is not a single wall but a series of fortifications built over many centuries. Most of the well-preserved sections date from the Ming dynasty. The walls were used for defence, border control and the regulation of trade along the Silk Road.",
     "The Great Wall is a series of fortifications, mostly Ming-era, used for defence, border control and trade regulation."),
    ("Regular exercise strengthens the heart, improves sleep and lowers stress. Health agencies recommend at least 150 minutes of moderate activity per week for adults, together with muscle-strengthening exercises on two days.",
     "Exercise benefits the heart, sleep and stress; adults should get 150 minutes of moderate activity weekly plus strength work."),
    ("Photosynthesis converts light energy into chemical energy. Plants absorb carbon dioxide and water and, using sunlight captured by chlorophyll, produce glucose and release oxygen as a by-product.",
     "Photosynthesis lets plants turn light, carbon dioxide and water into glucose, releasing oxygen."),
    ("Electric cars produce no tailpipe emissions, but their overall environmental impact depends on how the electricity is generated and how the batteries are made and recycled. In regions with clean power grids, their lifetime emissions are much lower than those of petrol cars.",
     "Electric cars have no tailpipe emissions; their total impact depends on the power grid and battery production."),
    ("The printing press, developed by Johannes Gutenberg around 1440, made books far cheaper to produce. This spread literacy, helped standardise languages and accelerated the exchange of scientific ideas across Europe.",
     "Gutenberg's printing press made books cheap, spreading literacy and speeding the exchange of ideas."),
]
EXTRACT = [
    ("The conference runs from 12 March 2025 to 14 March 2025, and registration closes on 1 February 2025.", "12 March 2025, 14 March 2025, 1 February 2025"),
    ("Invoice 4471 was issued on 3 June and paid on 28 June.", "3 June, 28 June"),
    ("The museum was founded on 5 May 1901 and renovated in 1998.", "5 May 1901, 1998"),
    ("Please submit the draft by 10 October; the final version is due 24 October.", "10 October, 24 October"),
    ("Our flight leaves on 7 August at 6 a.m. and returns on 19 August.", "7 August, 19 August"),
    ("The lease started on 1 January 2024 and ends on 31 December 2025.", "1 January 2024, 31 December 2025"),
]
GENERAL_QA = [
    ("What causes the seasons on Earth?", "The seasons are caused by the tilt of Earth's axis (about 23.5 degrees). As Earth orbits the Sun, each hemisphere is tilted towards the Sun for part of the year (summer) and away from it for another part (winter)."),
    ("Why is the sky blue?", "Sunlight is scattered by molecules in the air, and shorter (blue) wavelengths are scattered much more than longer (red) ones. That scattered blue light reaches our eyes from every direction, so the sky looks blue."),
    ("What is the difference between weather and climate?", "Weather is the state of the atmosphere over hours or days, such as rain or sunshine. Climate is the average pattern of weather in a region over many years."),
    ("How do vaccines work?", "Vaccines expose the immune system to a harmless part or weakened form of a pathogen, so it learns to recognise it and can respond quickly if the real infection occurs."),
    ("What is inflation?", "Inflation is the general rise in prices over time, which means each unit of money buys fewer goods and services."),
    ("Explain what a prime number is.", "A prime number is a whole number greater than 1 whose only divisors are 1 and itself, such as 2, 3, 5, 7 and 11."),
    ("What is the water cycle?", "The water cycle is the continuous movement of water: evaporation from oceans and lakes, condensation into clouds, precipitation as rain or snow, and flow back through rivers and groundwater."),
    ("Who wrote 'Romeo and Juliet'?", "William Shakespeare wrote 'Romeo and Juliet', a tragedy first performed in the 1590s."),
    ("How many continents are there?", "By the most common convention there are seven continents: Africa, Antarctica, Asia, Australia (Oceania), Europe, North America and South America."),
    ("What does DNA stand for?", "DNA stands for deoxyribonucleic acid, the molecule that carries genetic instructions in living organisms."),
    ("What is the boiling point of water at sea level?", "At sea level, water boils at 100 degrees Celsius (212 degrees Fahrenheit)."),
    ("Give me a tip for writing a clear email.", "Put the main request in the first sentence, keep paragraphs short, and end with a clear next step or deadline."),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet in the solar system; it is a gas giant more than eleven times wider than Earth."),
    ("Why do we have leap years?", "A year on Earth is about 365.24 days, so adding a day every four years (with some exceptions) keeps the calendar aligned with the seasons."),
    ("What is gravity?", "Gravity is the force of attraction between masses. On Earth it pulls objects towards the ground, and it keeps the Moon in orbit around Earth and the planets around the Sun."),
    ("What is the function of the heart?", "The heart pumps blood through the body, delivering oxygen and nutrients to the tissues and carrying away carbon dioxide and waste."),
    ("Suggest a healthy breakfast.", "Oatmeal topped with fruit and a handful of nuts, with a glass of milk or yoghurt, gives fibre, protein and slow-release energy."),
    ("What is an adjective?", "An adjective is a word that describes a noun, such as 'red', 'quick' or 'happy'."),
    ("How does a rainbow form?", "A rainbow forms when sunlight enters raindrops, is refracted, reflected inside the drop and refracted again on the way out, splitting the light into its colours."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("Why do leaves change colour in autumn?", "As days shorten, trees stop producing chlorophyll, the green pigment. The green fades and reveals yellow and orange pigments, while some trees also make red pigments."),
    ("What is recycling?", "Recycling is collecting and processing used materials such as paper, glass and metal so they can be made into new products instead of being thrown away."),
    ("What is a noun?", "A noun is a word that names a person, place, thing or idea, such as 'teacher', 'city' or 'freedom'."),
    ("How far is the Moon from Earth?", "The Moon is on average about 384,400 kilometres from Earth."),
    ("What does a thermometer measure?", "A thermometer measures temperature."),
    ("Name three renewable energy sources.", "Solar power, wind power and hydroelectric power are renewable energy sources."),
    ("What is a haiku?", "A haiku is a short Japanese poem of three lines with a 5-7-5 syllable pattern, often about nature."),
    ("Why should you wash your hands?", "Washing hands with soap removes germs and helps prevent the spread of infections."),
    ("What is the speed of light?", "Light travels at about 299,792 kilometres per second in a vacuum."),
    ("What is democracy?", "Democracy is a system of government in which citizens choose their leaders and laws, usually through free elections."),
]
GENERAL_QA_ZH = [
    ("为什么天空是蓝色的？", "阳光穿过大气时，波长较短的蓝光比红光更容易被空气分子散射，散射的蓝光从各个方向进入我们的眼睛，所以天空看起来是蓝色的。"),
    ("什么是光合作用？", "光合作用是植物利用阳光，把二氧化碳和水转化为葡萄糖并释放氧气的过程。"),
    ("地球上为什么有四季？", "地球自转轴倾斜约23.5度，公转时南北半球轮流朝向太阳，于是形成了春夏秋冬。"),
    ("什么是通货膨胀？", "通货膨胀是指物价总体水平持续上涨，同样的钱能买到的东西变少。"),
    ("请解释什么是质数。", "质数是大于1、只能被1和它本身整除的自然数，例如2、3、5、7、11。"),
    ("水在海平面上的沸点是多少？", "在海平面上，水的沸点是100摄氏度。"),
    ("太阳系最大的行星是哪一颗？", "木星是太阳系中最大的行星，它是一颗气态巨行星。"),
    ("为什么要勤洗手？", "用肥皂洗手可以去除细菌和病毒，减少疾病传播。"),
    ("什么是可再生能源？请举例。", "可再生能源是可以自然补充的能源，例如太阳能、风能和水能。"),
    ("彩虹是怎么形成的？", "阳光射入雨滴后发生折射和反射，不同颜色的光偏折角度不同，于是分成七种颜色，形成彩虹。"),
    ("给我一个写好文章的建议。", "先列提纲，确定每一段的中心意思，写完后再大声读一遍，删掉多余的句子。"),
    ("什么是民主？", "民主是一种由公民通过选举等方式参与决定领导人和法律的政治制度。"),
    ("月球离地球有多远？", "月球与地球的平均距离约为38.4万公里。"),
    ("秋天树叶为什么会变色？", "秋天日照变短，树木停止制造叶绿素，绿色褪去后，叶子里的黄色和橙色色素就显现出来。"),
    ("什么是垃圾分类？", "垃圾分类是把垃圾按可回收物、有害垃圾、厨余垃圾和其他垃圾分开投放，方便回收和处理。"),
]
GENERAL_TEXT = [
    "The Amazon rainforest covers much of the Amazon basin in South America and is home to an extraordinary variety of plants and animals. It plays an important role in the global carbon cycle.",
    "Mount Everest, on the border between Nepal and China, is the highest mountain above sea level. Climbers usually attempt the summit in May, when the weather is most stable.",
    "The human brain contains roughly 86 billion neurons. They communicate through electrical and chemical signals across junctions called synapses.",
    "Tea originated in China and spread to the rest of the world through trade. Today it is one of the most widely consumed drinks after water.",
    "The Pacific Ocean is the largest and deepest ocean on Earth. Its deepest point, the Challenger Deep in the Mariana Trench, is nearly eleven kilometres below the surface.",
    "长城是中国古代的军事防御工程，修建历史跨越两千多年，现存的大部分城墙建于明代。",
    "黄河是中国第二长河，被称为中华民族的母亲河，流经九个省区，最后注入渤海。",
    "Volcanoes form where magma from inside the Earth reaches the surface. Many are found along the edges of tectonic plates, such as the Pacific 'Ring of Fire'.",
    "The honeybee is an important pollinator. Many fruits and vegetables depend on bees to produce seeds and fruit.",
    "熊猫主要生活在中国四川、陕西和甘肃的山区，以竹子为主要食物，是中国的国宝。",
]


def en_records() -> list[dict]:
    recs: list[dict] = []
    for _ in range(60):
        name, (plural, single) = rng.choice(NAMES), rng.choice(ITEMS)
        price, n = rng.randint(2, 9), rng.randint(3, 12)
        kind = rng.randint(0, 2)
        if kind == 0:
            q = f"{name} buys {n} {plural} at ${price} each. How much does {name} spend in total? Explain your steps."
            a = f"Each {single} costs ${price} and {name} buys {n} of them.\nTotal = {n} × ${price} = ${n * price}.\nSo {name} spends ${n * price}."
        elif kind == 1:
            total = n * price
            q = f"{name} has ${total} and wants to buy {plural} that cost ${price} each. How many can {name} buy? Show your reasoning."
            a = f"We divide the money by the price of one {single}: {total} ÷ {price} = {n}.\n{name} can buy {n} {plural}."
        else:
            extra = rng.randint(2, 20)
            q = f"A box holds {n} {plural}. {name} has {price} full boxes and {extra} loose {plural}. How many {plural} are there altogether? Think step by step."
            a = f"Step 1: {price} boxes × {n} {plural} per box = {price * n}.\nStep 2: add the {extra} loose ones: {price * n} + {extra} = {price * n + extra}.\nThere are {price * n + extra} {plural} altogether."
        recs.append({"instruction": q, "input": "", "output": a, "category": "math"})
    for country, capital, cont in CAPITALS:
        recs.append({"instruction": f"What is the capital of {country}?", "input": "",
                     "output": f"The capital of {country} is {capital}, a major city in {cont}.", "category": "open_qa"})
    for en, zh in TRANSLATE:
        recs.append({"instruction": "Translate the following sentence into Chinese.", "input": en, "output": zh,
                     "category": "translation"})
    for s, label in SENTIMENT:
        recs.append({"instruction": "Classify the sentiment of this review as positive, negative or neutral.",
                     "input": s, "output": f"The sentiment is {label}.", "category": "classification"})
    for desc, fname, code in CODE:
        recs.append({"instruction": f"Write a Python function `{fname}` that {desc}.", "input": "",
                     "output": f"Here is a simple implementation:\n\n```python\n{code}\n```\n\nIt runs in linear time in the size of the input.",
                     "category": "code"})
    for topic in TOPICS:
        lines = [f"Soft light settles on {topic},", "and time slows down to hear it breathe."]
        if rng.random() < 0.5:
            lines = [f"In {topic} I find a pause,", "a small bright room without a door."]
        recs.append({"instruction": f"Write a short two-line poem about {topic}.", "input": "",
                     "output": "\n".join(lines), "category": "creative_writing"})
    for topic, ideas in BRAINSTORM:
        recs.append({"instruction": f"Give me four {topic}.", "input": "",
                     "output": "\n".join(f"{i + 1}. {x}" for i, x in enumerate(ideas)), "category": "brainstorming"})
    for casual, formal in FORMAL:
        recs.append({"instruction": "Rewrite this message in a formal tone.", "input": casual, "output": formal,
                     "category": "rewriting"})
    for para, summ in PARAGRAPHS:
        recs.append({"instruction": "Summarize the following paragraph in one sentence.", "input": para,
                     "output": summ, "category": "summarization"})
    for text, dates in EXTRACT:
        recs.append({"instruction": "Extract all the dates mentioned in the text, separated by commas.",
                     "input": text, "output": dates, "category": "extraction"})
    return recs


def zh_records() -> list[dict]:
    recs: list[dict] = []
    for _ in range(45):
        name, item = rng.choice(NAMES_ZH), rng.choice(ITEMS_ZH)
        price, n = rng.randint(2, 9), rng.randint(3, 12)
        if rng.random() < 0.5:
            q = f"{name}买了{n}个{item}，每个{price}元，一共花了多少钱？请写出计算过程。"
            a = f"每个{item}{price}元，买了{n}个。\n总价 = {n} × {price} = {n * price}（元）。\n答：{name}一共花了{n * price}元。"
        else:
            total = n * price
            q = f"{name}有{total}元，{item}每个{price}元，最多能买几个？请一步一步地思考。"
            a = f"用总钱数除以单价：{total} ÷ {price} = {n}。\n答：{name}最多能买{n}个{item}。"
        recs.append(_share(q, a))
    for country, capital, cont in CAPITALS_ZH:
        recs.append(_share(f"{country}的首都是哪里？", f"{country}的首都是{capital}，位于{cont}。"))
    for en, zh in TRANSLATE[:12]:
        recs.append(_share(f"请把下面的句子翻译成英文：{zh}", en))
    for s, label in SENTIMENT_ZH:
        recs.append(_share(f"判断下面这句评论的情感倾向（正面、负面或中性）：{s}", f"这句评论的情感倾向是{label}。"))
    zh_misc = [
        ("请给出三个提高睡眠质量的建议。", "1. 每天固定时间睡觉和起床。\n2. 睡前一小时不看手机。\n3. 保持卧室安静、黑暗和凉爽。"),
        ("用一句话总结：人工智能正在改变医疗、教育和交通等多个行业，但也带来了隐私和就业方面的挑战。", "人工智能在改变多个行业的同时，也带来了隐私和就业挑战。"),
        ("把这句话改写得更正式：明天的会我去不了，家里有点事。", "因家中有事，我无法出席明天的会议，敬请谅解。"),
        ("请写一首关于春天的四行短诗。", "春风轻拂柳丝长，\n燕子归来绕画梁。\n一夜细雨润桃李，\n满园新绿送花香。"),
        ("列出四种常见的编程语言，并各用一句话介绍。", "1. Python：语法简洁，适合数据分析和人工智能。\n2. Java：跨平台，常用于企业应用。\n3. JavaScript：网页前端开发的核心语言。\n4. C：运行效率高，适合系统编程。"),
        ("从下面的文字中提取所有人名：张伟和李娜周末去看了电影，王强没有去。", "张伟、李娜、王强"),
        ("解释一下什么是“温室效应”。", "温室效应是指大气中的二氧化碳等气体吸收地面散发的热量，使地球表面温度升高的现象。适度的温室效应让地球适合生存，但过强会导致全球变暖。"),
        ("写一个Python函数，判断一个数是不是偶数。", "可以这样写：\n\n```python\ndef is_even(n):\n    return n % 2 == 0\n```\n\n如果n除以2的余数为0，就是偶数。"),
        ("给一家新开的咖啡店想四个名字。", "1. 晨光咖啡\n2. 慢时光\n3. 豆香小馆\n4. 街角一杯"),
        ("请用三句话介绍一下长城。", "长城是中国古代修建的军事防御工程。它东起山海关，西至嘉峪关，绵延上万里。如今长城已成为世界文化遗产和著名旅游景点。"),
    ]
    recs.extend(_share(q, a) for q, a in zh_misc)
    return recs


def _share(q: str, a: str) -> dict:
    return {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}


def near_copy(text: str) -> str:
    """A near duplicate: a word-level edit that keeps most shingles."""
    if any("\u4e00" <= ch <= "\u9fff" for ch in text):
        return text.replace("。", "！", 1) if "。" in text else text + "。"
    words = text.split()
    i = rng.randrange(len(words))
    words[i] = words[i].upper() if rng.random() < 0.5 else words[i] + ","
    return " ".join(words)


def junk_en() -> list[dict]:
    return [
        {"instruction": "Explain how a bicycle gear works.", "input": "", "output": "As an AI language model, I cannot provide an explanation of that."},
        {"instruction": "Write a haiku about winter.", "input": "", "output": "I'm sorry, but as an AI language model I am unable to write poems."},
        {"instruction": "Describe the main causes of the French Revolution.", "input": "", "output": "The main causes of the French Revolution were the financial crisis of the monarchy, the unfair tax system and"},
        {"instruction": "List some fruits.", "input": "", "output": "apple apple apple apple apple apple apple apple apple apple apple apple apple apple apple apple apple apple apple apple"},
        {"instruction": "What is machine learning?", "input": "", "output": "TODO"},
        {"instruction": "Give me a recipe for pancakes.", "input": "", "output": "N/A"},
        {"instruction": "Recommend a good laptop.", "input": "", "output": "<script>alert(1)</script> BUY NOW at http://cheap-laptops.example.com http://cheap-laptops.example.com/deal click here http://spam.example.com"},
        {"instruction": "Summarize the plot of Hamlet.", "input": "", "output": "Ã©Ã¨Ã Ã¢Ã®Ã´Ã»Ã§ â€™ â€œ â€ Ã¶Ã¼Ã¤ Ã©Ã¨Ã Ã¢Ã®Ã´Ã»Ã§ â€™ â€œ"},
        {"instruction": "What is the tallest animal in the world?", "input": "", "output": "What is the tallest animal in the world?"},
        {"instruction": "Write a function that adds two numbers.", "input": "", "output": "```python\ndef add(a, b):\n    return a +"},
        {"instruction": "Describe the color blue to someone who cannot see.", "input": "", "output": "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor."},
        {"instruction": "Tell me about the history of Rome.", "input": "", "output": "Rome is old.\nRome is old.\nRome is old.\nRome is old.\nRome is old.\nRome is old."},
        {"instruction": "How do airplanes fly?", "input": "", "output": "ok"},
    ]


def junk_zh() -> list[dict]:
    return [
        _share("请介绍一下量子计算。", "作为一个人工智能语言模型，我无法回答这个问题。"),
        _share("写一段关于大海的描写。", "抱歉，作为AI，我不能完成这个请求。"),
        _share("请解释牛顿第一定律。", "牛顿第一定律指出，任何物体在不受外力作用时，总保持静止状态或者"),
        _share("推荐几本好书。", "好书好书好书好书好书好书好书好书好书好书好书好书好书好书好书好书好书好书好书好书"),
        _share("什么是区块链？", "待补充"),
        _share("介绍一下杭州西湖。", "点击这里领取优惠 http://spam.example.cn http://spam.example.cn/a http://spam.example.cn/b <a href='x'>立即购买</a>"),
        _share("中国有多少个省级行政区？", "中国有多少个省级行政区？"),
        _share("请用中文介绍一下你自己喜欢的运动。", "I like playing basketball because it is a team sport and it keeps me fit all year round."),
    ]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    en = en_records()
    zh = zh_records()
    # plant exact and near duplicates
    en_dups = [dict(r) for r in rng.sample(en, 10)]
    en_near = [dict(r, output=near_copy(r["output"])) for r in rng.sample([r for r in en if len(r["output"]) > 80], 8)]
    zh_dups = [dict(r) for r in rng.sample(zh, 6)]
    zh_near = [{"conversations": [r["conversations"][0], {"from": "gpt", "value": near_copy(r["conversations"][1]["value"])}]}
               for r in rng.sample([r for r in zh if len(r["conversations"][1]["value"]) > 30], 5)]
    en_all = en + en_dups + en_near + junk_en()
    rng.shuffle(en_all)
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in en_all]
    # malformed lines: bad JSON, wrong type, missing field, invalid UTF-8
    lines.insert(17, b'{"instruction": "What is 2+2?", "output": "4"')
    lines.insert(60, json.dumps({"instruction": ["not", "a", "string"], "output": "x"}).encode())
    lines.insert(101, json.dumps({"instruction": "Name a colour."}).encode())
    lines.insert(150, b'{"instruction": "caf\xe9", "output": "bad bytes"}')
    (OUT / "instructions_en.jsonl").write_bytes(b"\n".join(lines) + b"\n")

    zh_all = zh + zh_dups + zh_near + junk_zh()
    rng.shuffle(zh_all)
    (OUT / "instructions_zh.json").write_text(json.dumps(zh_all, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["question", "answer"])
    extra = [
        ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au, from the Latin word 'aurum'."),
        ("How many legs does a spider have?", "A spider has eight legs, which distinguishes it from insects, which have six."),
        ("Convert 5 kilometres to metres, showing the calculation.", "1 kilometre = 1,000 metres, so 5 km = 5 × 1,000 = 5,000 metres."),
        ("一年有几个季度？", "一年有四个季度，每个季度三个月。"),
        ("What is the plural of 'mouse', as in the animal?", "The plural of 'mouse' is 'mice'."),
        ("", "An answer without a question."),
        ("Describe a triangle, including its angles.", "A triangle is a polygon with three sides and three angles, and its angles always add up to 180 degrees."),
    ]
    for q, a in extra:
        w.writerow([q, a])
    (OUT / "extra_qa.csv").write_text(buf.getvalue(), encoding="utf-8")

    general = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
               for q, a in GENERAL_QA + GENERAL_QA_ZH]
    general += [{"text": t} for t in GENERAL_TEXT]
    with open(OUT / "general.jsonl", "w", encoding="utf-8") as fh:
        for r in general:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(en_all) + 4} en lines, {len(zh_all)} zh rows, {len(extra)} csv rows, {len(general)} general rows")


if __name__ == "__main__":
    main()
