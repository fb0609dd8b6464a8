"""Scripted conversation material per language: greetings, question/answer exchanges, reactions, closings,
backchannels and the slot fillers that make N dialogues differ (data only; :mod:`.dialogues` plans with it).

Notation (all languages):

- a template is one turn; its **words** are separated by spaces. Japanese has no spaces, so a "word" there is a
  short bunsetsu-like chunk — a content word with the particles and endings attached (``今日は`` ``いい``
  ``天気ですね。``) — and the words are joined without spaces in the written text.
- ``{slot}`` is replaced by a filler of that slot (a filler may hold several words).
- ``<written|spoken>`` writes ``written`` in the alignments and transcripts but gives espeak-ng ``spoken``: the
  Japanese kanji carry their kana reading (espeak-ng's ``ja`` voice reads kana only; it says "Chinese letter"
  for a kanji), and the topic particle は is spoken わ. Text outside ``<...>`` is both written and spoken.
- a greeting or closing is a tuple of lines spoken alternately by the two speakers, the opener first.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Exchange:
    """A question and the answers it may get (one is drawn)."""

    question: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class Templates:
    """All the material of one language. ``spaced``: words are written with spaces between them."""

    code: str
    spaced: bool
    greetings: tuple[tuple[str, ...], ...]
    exchanges: tuple[Exchange, ...]
    reactions: tuple[str, ...]
    closings: tuple[tuple[str, ...], ...]
    backchannels: tuple[str, ...]
    slots: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _x(question: str, *answers: str) -> Exchange:
    return Exchange(question, answers)


ENGLISH = Templates(
    code="en",
    spaced=True,
    greetings=(
        ("Hi {name}, how are you?", "I'm good, thanks. And you?", "Not bad at all."),
        ("Hello there!", "Oh, hi! Good to see you."),
        ("Good morning!", "Morning! Did you sleep well?", "Yes, pretty well, thanks."),
        ("Hey, long time no see.", "I know, it's been ages!"),
        ("Hi, is this a good time to talk?", "Sure, go ahead."),
        ("Good evening, {name}.", "Good evening! How was your day?", "Busy, but good."),
        ("Hey, what's up?", "Not much, just relaxing at home."),
        ("Hi! Can you hear me okay?", "Yes, loud and clear."),
        ("Hello, this is {name}.", "Oh, hi {name}, nice to hear from you."),
        ("Hey there, how's it going?", "Pretty good, thanks for asking."),
        ("Morning, {name}!", "Oh, good morning! You're up early.", "I couldn't sleep."),
        ("Hi, thanks for calling back.", "No problem at all."),
    ),
    exchanges=(
        _x("What did you do on {day}?", "I went to {place} with {name}.",
           "Not much, I just stayed home and {done}.", "I {done} most of the day."),
        _x("Do you like {food}?", "Yes, I love {food}.", "Not really, I prefer {food}.",
           "It's okay, but {food} is better."),
        _x("Where are you right now?", "I'm at {place} at the moment.", "Still at home, but I'm leaving soon."),
        _x("What time is the meeting tomorrow?", "It starts at {time}, I think.", "Let me check. It's at {time}."),
        _x("How was the weather there?", "It was {weather} all week.", "Honestly, pretty {weather}."),
        _x("Have you seen {name} lately?", "Yes, I saw {name} at {place} yesterday.", "No, not for a while."),
        _x("What are you cooking tonight?", "Probably {food}, something simple.", "I'm making {food} for the kids."),
        _x("Are you free on {day}?", "I think so, what's the plan?", "Sorry, I'm busy on {day}.",
           "Yes, after {time}."),
        _x("What do you do for fun?", "I like {hobby} on weekends.", "Mostly {hobby}, when I have time."),
        _x("How long does it take to get to {place}?", "About {number} minutes by bus.",
           "Maybe {number} minutes if the traffic is light."),
        _x("Did you finish the report?", "Almost, I need {number} more minutes.", "Yes, I sent it this morning."),
        _x("Which book are you reading now?", "A novel about {topic}.", "Something about {topic}, it's really good."),
        _x("Can you help me with {task} later?", "Of course, just tell me when.", "Sure, how about at {time}?"),
        _x("What's your favourite season?", "I'd say {season}, because of the weather.", "Definitely {season}."),
        _x("Do you want to grab coffee on {day}?", "I'd love to, where?", "Yes, let's meet at {place}."),
        _x("How is your new job going?", "It's going well, the team is nice.", "Busy, but I'm learning a lot."),
        _x("Did you watch the game last night?", "Yes, it was amazing!", "No, I missed it. Who won?"),
        _x("Where should we go for dinner?", "How about that place near {place}?",
           "Let's try somewhere new, maybe {food}?"),
        _x("Have you ever been to {city}?", "Yes, once, a few years ago.", "No, but I would really like to go."),
        _x("What are your plans for the holidays?", "We're going to {city} to see family.",
           "Just resting at home, I think."),
        _x("Is {name} coming to the party?", "I think so, {name} said yes.", "Maybe, {name} wasn't sure."),
        _x("How's your {relative} doing?", "Much better now, thank you.", "Fine, busy with work as usual."),
        _x("Do you know a good place for {food}?", "There's a great one near {place}.",
           "Try the small place by {place}."),
        _x("When does the train leave?", "At {time}, from platform {small}.", "In about {number} minutes."),
        _x("What's the weather like today?", "It's {weather} and a bit windy.", "Pretty {weather}, take a jacket."),
        _x("Did you get my message?", "Yes, sorry I didn't reply.", "I did, thanks. I'll answer tonight."),
    ),
    reactions=("Oh, nice.", "That sounds great.", "Really? I didn't know that.", "Good for you.",
               "Okay, that makes sense.", "Ha, I love that.", "Oh, interesting.", "Nice, I'm glad to hear that.",
               "Cool.", "Sounds like fun."),
    closings=(
        ("Okay, I have to go now.", "Sure, talk to you later!", "Bye!"),
        ("Thanks for the chat.", "Anytime. Take care!"),
        ("Alright, see you on {day}.", "See you then, bye!"),
        ("I should get going.", "Okay, have a good evening.", "You too!"),
        ("Great talking to you, {name}.", "You too, bye for now."),
        ("Let's talk again soon.", "Definitely. Bye!"),
        ("Sorry, someone's at the door.", "No worries, go ahead. Bye!"),
        ("Okay, good night.", "Good night, sleep well."),
    ),
    backchannels=("mm-hmm", "uh-huh", "yeah", "right", "okay", "I see", "sure", "oh", "hmm", "really?"),
    slots={
        "name": ("Anna", "Ben", "Maya", "Tom", "Priya", "Leo", "Sara", "David", "Emma", "Omar", "Lucy", "Sam"),
        "day": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
        "place": ("the park", "the library", "the market", "the office", "the beach", "the station",
                  "the museum", "the gym", "the mall", "the cafe"),
        "food": ("pizza", "pasta", "sushi", "curry", "tacos", "soup", "noodles", "salad", "rice and beans",
                 "pancakes"),
        "hobby": ("hiking", "reading", "cooking", "swimming", "painting", "playing chess", "running",
                  "gardening", "playing the guitar"),
        "done": ("read a book", "cleaned the house", "watched a movie", "went for a run", "played games",
                 "baked bread", "called my parents"),
        "time": ("nine", "ten thirty", "noon", "two o'clock", "half past three", "five fifteen", "seven"),
        "weather": ("sunny", "rainy", "cloudy", "cold", "warm", "windy", "hot", "foggy"),
        "number": ("five", "ten", "fifteen", "twenty", "thirty", "forty"),
        "small": ("one", "two", "three", "four", "five", "six"),
        "topic": ("space travel", "an old family", "the ocean", "a small town", "a detective", "the history of tea",
                  "music", "a long journey"),
        "task": ("the boxes", "my homework", "the new computer", "the garden", "the move", "dinner"),
        "season": ("spring", "summer", "autumn", "winter"),
        "city": ("Paris", "Tokyo", "Delhi", "Rome", "Cairo", "Lima", "Seoul", "Berlin", "Mumbai", "Sydney"),
        "relative": ("mother", "father", "sister", "brother", "grandmother", "uncle", "cousin"),
    },
)

HINDI = Templates(
    code="hi",
    spaced=True,
    greetings=(
        ("नमस्ते {name} जी, आप कैसे हैं?", "मैं ठीक हूँ, धन्यवाद। आप सुनाइए?", "सब बढ़िया है।"),
        ("हैलो, कैसे हो?", "अच्छा हूँ यार, तुम बताओ।"),
        ("सुप्रभात!", "सुप्रभात! नींद अच्छी आई?", "हाँ, बहुत अच्छी।"),
        ("अरे {name}, बहुत दिनों बाद!", "हाँ, सच में बहुत समय हो गया।"),
        ("नमस्ते, क्या अभी बात कर सकते हैं?", "हाँ हाँ, बोलिए।"),
        ("शुभ संध्या!", "शुभ संध्या! आज का दिन कैसा रहा?", "थोड़ा व्यस्त, पर अच्छा।"),
        ("हैलो, मेरी आवाज़ आ रही है?", "हाँ, बिल्कुल साफ़ आ रही है।"),
        ("नमस्कार {name} जी!", "नमस्कार! क्या हाल है?", "सब ठीक है, शुक्रिया।"),
        ("अरे, क्या चल रहा है?", "कुछ ख़ास नहीं, बस आराम कर रहा हूँ।"),
        ("हैलो, फ़ोन करने के लिए धन्यवाद।", "कोई बात नहीं।"),
    ),
    exchanges=(
        _x("{day} को आपने क्या किया?", "मैं {name} के साथ {place} गया था।", "कुछ ख़ास नहीं, घर पर ही आराम किया।",
           "पूरा दिन {done}।"),
        _x("क्या आपको {food} पसंद है?", "हाँ, मुझे {food} बहुत पसंद है।", "ज़्यादा नहीं, मुझे {food} ज़्यादा अच्छा लगता है।"),
        _x("आप अभी कहाँ हैं?", "मैं अभी {place} में हूँ।", "घर पर ही हूँ, थोड़ी देर में निकलूँगा।"),
        _x("कल मीटिंग कितने बजे है?", "शायद {time} बजे है।", "एक मिनट, देखता हूँ। {time} बजे है।"),
        _x("वहाँ मौसम कैसा था?", "पूरे हफ़्ते {weather} था।", "सच कहूँ तो काफ़ी {weather} था।"),
        _x("क्या आप हाल में {name} से मिले?", "हाँ, कल ही {place} में मिला था।", "नहीं, काफ़ी समय से नहीं मिला।"),
        _x("आज रात खाने में क्या बना रहे हैं?", "शायद {food}, कुछ आसान सा।", "बच्चों के लिए {food} बना रहा हूँ।"),
        _x("क्या आप {day} को ख़ाली हैं?", "हाँ, शायद। क्या प्लान है?", "माफ़ कीजिए, {day} को मैं व्यस्त हूँ।",
           "हाँ, {time} बजे के बाद।"),
        _x("आपको ख़ाली समय में क्या करना पसंद है?", "मुझे {hobby} पसंद है।", "ज़्यादातर {hobby}, जब समय मिले।"),
        _x("{place} पहुँचने में कितना समय लगता है?", "बस से लगभग {number} मिनट।", "ट्रैफ़िक कम हो तो {number} मिनट।"),
        _x("क्या रिपोर्ट पूरी हो गई?", "लगभग, बस {number} मिनट और चाहिए।", "हाँ, आज सुबह भेज दी।"),
        _x("आजकल कौन सी किताब पढ़ रहे हैं?", "{topic} के बारे में एक उपन्यास।", "{topic} पर एक किताब, बहुत अच्छी है।"),
        _x("क्या आप बाद में {task} में मेरी मदद करेंगे?", "ज़रूर, बस बता देना कब।", "हाँ, {time} बजे ठीक रहेगा?"),
        _x("आपका पसंदीदा मौसम कौन सा है?", "मुझे {season} का मौसम सबसे अच्छा लगता है।", "बेशक {season} का मौसम।"),
        _x("{day} को चाय पीने चलें?", "ज़रूर, कहाँ मिलें?", "हाँ, {place} के पास मिलते हैं।"),
        _x("नई नौकरी कैसी चल रही है?", "अच्छी चल रही है, टीम भी अच्छी है।", "काम ज़्यादा है, पर बहुत कुछ सीख रहा हूँ।"),
        _x("कल रात का मैच देखा?", "हाँ, कमाल का था!", "नहीं, छूट गया। कौन जीता?"),
        _x("रात को खाना खाने कहाँ चलें?", "{place} के पास वाले होटल में चलें?", "कुछ नया खाते हैं, शायद {food}?"),
        _x("क्या आप कभी {city} गए हैं?", "हाँ, कुछ साल पहले एक बार।", "नहीं, पर जाने का बहुत मन है।"),
        _x("छुट्टियों में क्या करने वाले हैं?", "परिवार से मिलने {city} जा रहे हैं।", "बस घर पर आराम करेंगे।"),
        _x("क्या {name} पार्टी में आ रहे हैं?", "मुझे लगता है हाँ।", "पता नहीं, शायद।"),
        _x("आपकी {relative} कैसी हैं?", "अब काफ़ी ठीक हैं, धन्यवाद।", "ठीक हैं, हमेशा की तरह व्यस्त।"),
        _x("{food} के लिए कोई अच्छी जगह पता है?", "{place} के पास एक बढ़िया जगह है।", "हाँ, स्टेशन के पास वाली दुकान अच्छी है।"),
        _x("ट्रेन कितने बजे छूटती है?", "{time} बजे, प्लेटफ़ॉर्म {small} से।", "लगभग {number} मिनट में।"),
        _x("आज मौसम कैसा है?", "आज {weather} है, थोड़ी हवा भी है।", "काफ़ी {weather} है, छाता ले लेना।"),
        _x("मेरा मैसेज मिला?", "हाँ, माफ़ करना, जवाब नहीं दे पाया।", "मिल गया, धन्यवाद। रात को जवाब दूँगा।"),
    ),
    reactions=("अरे वाह!", "बहुत बढ़िया।", "सच में? मुझे पता नहीं था।", "अच्छा, समझ गया।", "यह तो अच्छी बात है।",
               "वाह, मज़ेदार।", "ठीक है, सही है।", "अच्छा लगा सुनकर।"),
    closings=(
        ("अच्छा, अब मुझे चलना होगा।", "ठीक है, बाद में बात करते हैं!", "बाय!"),
        ("बात करके अच्छा लगा।", "मुझे भी। अपना ध्यान रखना!"),
        ("ठीक है, {day} को मिलते हैं।", "हाँ, तब मिलते हैं।"),
        ("चलो, फिर बात करेंगे।", "ज़रूर। नमस्ते!"),
        ("माफ़ करना, कोई दरवाज़े पर है।", "कोई बात नहीं, जाइए।"),
        ("शुभ रात्रि।", "शुभ रात्रि, आराम से सोना।"),
    ),
    backchannels=("हाँ", "अच्छा", "हम्म", "जी", "ठीक है", "सही", "हाँ हाँ", "अरे"),
    slots={
        "name": ("अनु", "राहुल", "प्रिया", "अमित", "नेहा", "विकास", "सीमा", "रवि", "पूजा", "अर्जुन", "कविता", "सुनील"),
        "day": ("सोमवार", "मंगलवार", "बुधवार", "गुरुवार", "शुक्रवार", "शनिवार", "रविवार"),
        "place": ("बाज़ार", "दफ़्तर", "पार्क", "लाइब्रेरी", "स्टेशन", "मंदिर", "कॉलेज", "मॉल"),
        "food": ("दाल चावल", "पनीर", "बिरयानी", "पराठे", "खिचड़ी", "राजमा चावल", "समोसे", "पुलाव", "डोसा", "छोले भटूरे"),
        "hobby": ("किताबें पढ़ना", "क्रिकेट खेलना", "खाना बनाना", "गाने सुनना", "घूमना", "तैरना", "पेंटिंग करना", "बागवानी करना"),
        "done": ("किताब पढ़ी", "फ़िल्म देखी", "घर की सफ़ाई की", "खाना बनाया", "क्रिकेट खेला", "गाने सुने"),
        "time": ("नौ", "दस", "ग्यारह", "दो", "तीन", "चार", "पाँच", "साढ़े चार", "ढाई"),
        "weather": ("ठंडा", "गरम", "सुहावना", "अच्छा", "ख़राब", "उमस भरा"),
        "number": ("पाँच", "दस", "पंद्रह", "बीस", "तीस", "चालीस"),
        "small": ("एक", "दो", "तीन", "चार", "पाँच", "छह"),
        "topic": ("अंतरिक्ष", "पुराने शहरों", "समुद्र", "एक छोटे गाँव", "इतिहास", "संगीत", "एक लंबी यात्रा"),
        "task": ("सामान", "होमवर्क", "कंप्यूटर", "बगीचे के काम", "खाना बनाने"),
        "season": ("सर्दी", "गर्मी", "बरसात", "बसंत"),
        "city": ("दिल्ली", "मुंबई", "जयपुर", "वाराणसी", "कोलकाता", "चेन्नई", "गोवा", "शिमला", "लखनऊ"),
        "relative": ("माँ", "दादी", "बहन", "नानी", "मौसी"),
    },
)

# Japanese words are bunsetsu-like chunks (see the module docstring); <written|spoken> gives the kana reading.
JAPANESE = Templates(
    code="ja",
    spaced=False,
    greetings=(
        ("<こんにちは|こんにちわ>、 {name}。", "あ、 <こんにちは|こんにちわ>。 <元気|げんき>ですか？", "はい、 <元気|げんき>です。"),
        ("おはようございます。", "おはよう！ よく <眠|ねむ>れた？", "うん、 ぐっすり。"),
        ("もしもし、 <聞|き>こえますか？", "はい、 よく <聞|き>こえます。"),
        ("<久|ひさ>しぶり！", "ほんと、 <久|ひさ>しぶりだね！"),
        ("<こんばんは|こんばんわ>。", "<こんばんは|こんばんわ>。 <今日は|きょうわ> どうだった？", "<忙|いそが>しかったけど、 よかったよ。"),
        ("ねえ、 <今|いま> ちょっと いい？", "うん、 いいよ。"),
        ("<お疲|おつか>れさまです。", "<お疲|おつか>れさまです。 <今日も|きょうも> <暑|あつ>いですね。"),
        ("どうも、 {name}。", "あ、 どうも。 <最近|さいきん> どう？", "まあまあ かな。"),
        ("<お電話|おでんわ> ありがとう。", "いえいえ。"),
        ("やあ、 <元気|げんき>？", "<元気|げんき>だよ、 ありがとう。"),
    ),
    exchanges=(
        _x("{day}<は|わ> <何|なに>を しましたか？", "{name}と {place}に <行|い>きました。",
           "とくに <何|なに>も。 <家|いえ>で ゆっくり しました。", "<一日中|いちにちじゅう> {done}。"),
        _x("{food}<は|わ> <好|す>きですか？", "はい、 {food}が <大好|だいす>きです。", "あまり。 {food}の <方|ほう>が <好|す>きです。"),
        _x("<今|いま> どこに いますか？", "<今は|いまわ> {place}に います。", "まだ <家|いえ>です。 もうすぐ <出|で>ます。"),
        _x("<明日|あした>の <会議は|かいぎわ> <何時|なんじ>からですか？", "たしか {time}からです。",
           "ちょっと <待|ま>って。 {time}からです。"),
        _x("そっちの <天気は|てんきわ> どうでしたか？", "<一週間|いっしゅうかん> ずっと {weather}でした。",
           "けっこう {weather}でした。"),
        _x("<最近|さいきん> {name}に <会|あ>いましたか？", "はい、 <昨日|きのう> {place}で <会|あ>いました。",
           "いいえ、 しばらく <会|あ>っていません。"),
        _x("<今夜は|こんやわ> <何|なに>を <作|つく>りますか？", "たぶん {food}です。 <簡単|かんたん>な もので。",
           "<子|こ>どもたちに {food}を <作|つく>ります。"),
        _x("{day}<は|わ> <空|あ>いていますか？", "たぶん <大丈夫|だいじょうぶ>です。 <何|なに>か ありますか？",
           "すみません、 {day}<は|わ> <忙|いそが>しいです。", "はい、 {time}<以降|いこう>なら。"),
        _x("<趣味は|しゅみわ> <何|なん>ですか？", "{hobby}が <好|す>きです。", "<週末は|しゅうまつわ> よく {hobby}を します。"),
        _x("{place}まで どれくらい かかりますか？", "バスで {minutes}くらいです。",
           "<道|みち>が <空|す>いていれば {minutes}です。"),
        _x("<報告書は|ほうこくしょわ> <終|お>わりましたか？", "もう <少|すこ>しです。 あと {minutes} ください。",
           "はい、 <今朝|けさ> <送|おく>りました。"),
        _x("<今|いま> <何|なん>の <本|ほん>を <読|よ>んでいますか？", "{topic}の <小説|しょうせつ>です。",
           "{topic}に ついての <本|ほん>です。 すごく <面白|おもしろ>いです。"),
        _x("あとで {task}を <手伝|てつだ>って もらえますか？", "もちろん、 いつでも <言|い>って ください。",
           "いいですよ。 {time}<は|わ> どうですか？"),
        _x("どの <季節|きせつ>が <一番|いちばん> <好|す>きですか？", "{season}が <一番|いちばん> <好|す>きです。",
           "やっぱり {season}ですね。"),
        _x("{day}に コーヒーでも どうですか？", "いいですね。 どこで <会|あ>いますか？",
           "ぜひ。 {place}の <近|ちか>くで <会|あ>いましょう。"),
        _x("<新|あたら>しい <仕事は|しごとわ> どうですか？", "<順調|じゅんちょう>です。 チームも いい <人|ひと>たちです。",
           "<忙|いそが>しいけど、 たくさん <勉強|べんきょう>に なります。"),
        _x("<昨日|きのう>の <試合|しあい> <見|み>ましたか？", "はい、 すごかったです！",
           "いいえ、 <見逃|みのが>しました。 どっちが <勝|か>ちましたか？"),
        _x("<晩|ばん>ごはん、 どこに <行|い>きましょうか？", "{place}の <近|ちか>くの <お店は|おみせわ> どうですか？",
           "たまには {food}<は|わ> どうですか？"),
        _x("{city}に <行|い>った ことが ありますか？", "はい、 <何年|なんねん>か <前|まえ>に <一度|いちど>。",
           "いいえ、 でも ぜひ <行|い>きたいです。"),
        _x("<休|やす>みの <予定は|よていわ>？", "<家族|かぞく>に <会|あ>いに {city}に <行|い>きます。",
           "<家|いえ>で ゆっくり する つもりです。"),
        _x("{name}も パーティーに <来|き>ますか？", "たぶん <来|く>ると <思|おも>います。", "まだ わからないそうです。"),
        _x("{relative}<は|わ> <お元気|おげんき>ですか？", "おかげさまで、 だいぶ よく なりました。",
           "<元気|げんき>です。 <相変|あいか>わらず <忙|いそが>しいです。"),
        _x("いい {food}の <お店|おみせ>、 <知|し>っていますか？", "{place}の <近|ちか>くに いい <店|みせ>が あります。",
           "<駅前|えきまえ>の <店|みせ>が おすすめです。"),
        _x("<電車は|でんしゃわ> <何時|なんじ>に <出|で>ますか？", "{time}に <出|で>ます。", "あと {minutes}くらいです。"),
        _x("<今日の|きょうの> <天気は|てんきわ> どう？", "<今日は|きょうわ> {weather}で、 ちょっと <風|かぜ>も あるよ。",
           "{weather}だから、 <上着|うわぎ>を <持|も>って いって。"),
        _x("メッセージ、 <届|とど>いた？", "うん、 <返事|へんじ>が <遅|おそ>く なって ごめん。",
           "<届|とど>いたよ。 <夜|よる>に <返事|へんじ>するね。"),
    ),
    reactions=("へえ、 いいですね。", "それは よかったです。", "ほんとに？ <知|し>りませんでした。", "なるほど、 わかりました。",
               "わあ、 <楽|たの>しそう。", "いいなあ。", "そうなんですね。", "すごいですね。"),
    closings=(
        ("じゃあ、 そろそろ <行|い>かないと。", "うん、 またね！", "またね！"),
        ("<話|はな>せて よかったです。", "こちらこそ。 <気|き>を つけて！"),
        ("じゃあ、 また {day}に。", "はい、 また {day}に。"),
        ("また <話|はな>しましょう。", "ぜひ。 じゃあね！"),
        ("すみません、 だれか <来|き>たみたい。", "<大丈夫|だいじょうぶ>、 またね。"),
        ("おやすみなさい。", "おやすみ。 ゆっくり <休|やす>んでね。"),
    ),
    backchannels=("うん", "はい", "ええ", "へえ", "なるほど", "そうですね", "うんうん", "あー"),
    slots={
        "name": ("<田中|たなか>さん", "<佐藤|さとう>さん", "<鈴木|すずき>さん", "<高橋|たかはし>さん", "<山本|やまもと>さん",
                 "<中村|なかむら>さん", "<小林|こばやし>さん", "<加藤|かとう>さん", "<伊藤|いとう>さん", "<渡辺|わたなべ>さん"),
        "day": ("<月曜日|げつようび>", "<火曜日|かようび>", "<水曜日|すいようび>", "<木曜日|もくようび>", "<金曜日|きんようび>",
                "<土曜日|どようび>", "<日曜日|にちようび>", "<週末|しゅうまつ>"),
        "place": ("<駅|えき>", "<公園|こうえん>", "<図書館|としょかん>", "<会社|かいしゃ>", "<学校|がっこう>", "スーパー", "カフェ",
                  "<病院|びょういん>", "<海|うみ>"),
        "food": ("ラーメン", "<寿司|すし>", "カレー", "うどん", "<天ぷら|てんぷら>", "そば", "おにぎり", "<焼き鳥|やきとり>",
                 "<お好み焼き|おこのみやき>", "<餃子|ぎょうざ>"),
        "hobby": ("<読書|どくしょ>", "<料理|りょうり>", "<水泳|すいえい>", "ジョギング", "<散歩|さんぽ>", "<釣り|つり>", "テニス",
                  "ゴルフ", "サッカー", "ヨガ"),
        "done": ("<本|ほん>を <読|よ>んでいました", "<映画|えいが>を <見|み>ていました", "<掃除|そうじ>を していました",
                 "<料理|りょうり>を していました", "ゲームを していました"),
        "time": ("<九時|くじ>", "<十時|じゅうじ>", "<十時半|じゅうじはん>", "<一時|いちじ>", "<二時|にじ>", "<三時|さんじ>",
                 "<四時半|よじはん>", "<五時|ごじ>"),
        "weather": ("<晴れ|はれ>", "<雨|あめ>", "くもり", "<雪|ゆき>"),
        "minutes": ("<五分|ごふん>", "<十分|じゅっぷん>", "<十五分|じゅうごふん>", "<二十分|にじゅっぷん>", "<三十分|さんじゅっぷん>",
                    "<四十分|よんじゅっぷん>"),
        "topic": ("<宇宙|うちゅう>", "<海|うみ>", "<歴史|れきし>", "<音楽|おんがく>", "<旅|たび>", "<探偵|たんてい>",
                  "<昔|むかし>の <町|まち>"),
        "task": ("<引っ越し|ひっこし>", "<宿題|しゅくだい>", "<掃除|そうじ>", "<料理|りょうり>", "パソコンの <設定|せってい>"),
        "season": ("<春|はる>", "<夏|なつ>", "<秋|あき>", "<冬|ふゆ>"),
        "city": ("<京都|きょうと>", "<大阪|おおさか>", "<札幌|さっぽろ>", "<福岡|ふくおか>", "<沖縄|おきなわ>", "<奈良|なら>",
                 "<名古屋|なごや>", "<横浜|よこはま>", "<広島|ひろしま>"),
        "relative": ("<お母さん|おかあさん>", "<お父さん|おとうさん>", "<お姉さん|おねえさん>", "<お兄さん|おにいさん>",
                     "おばあさん"),
    },
)

TEMPLATES: dict[str, Templates] = {t.code: t for t in (ENGLISH, HINDI, JAPANESE)}
