"""Tiny corpora in three scripts for tokenizer and vocabulary-adaptation tests (written for these tests)."""

ENGLISH = [
    "hello there how are you doing today", "i would like a cup of coffee please",
    "we went to the market on saturday morning", "she said the weather was lovely in the park",
    "can you tell me the way to the station", "my brother plays the guitar every evening",
    "please close the window before you leave", "the children laughed at the funny clown",
    "it is raining again so take an umbrella", "do you want to watch a movie tonight",
]
HINDI = [
    "नमस्ते आप कैसे हैं", "मैं ठीक हूँ धन्यवाद", "आज मौसम बहुत अच्छा है", "क्या आप चाय पीना चाहेंगे",
    "हम कल बाजार जाएंगे", "मेरा भाई हर शाम गिटार बजाता है", "कृपया जाने से पहले खिड़की बंद करें",
    "बच्चे मज़ेदार जोकर पर हँसे", "फिर से बारिश हो रही है छाता ले लो", "क्या आप आज रात फिल्म देखना चाहते हैं",
]
JAPANESE = [
    "こんにちは元気ですか", "今日はいい天気ですね", "明日は雨が降るそうです", "駅までどうやって行きますか",
    "コーヒーを一杯ください", "兄は毎晩ギターを弾きます", "出かける前に窓を閉めてください",
    "子供たちは面白いピエロを見て笑いました", "また雨が降っているので傘を持って行って", "今夜映画を見たいですか",
]
