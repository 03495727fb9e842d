"""Intent routing: is a chat message small talk (answer without retrieval) or a question for the documents?

A tiny rule classifier, pure and fast (microseconds, no LLM call), and conservative: a message is
CONVERSATIONAL only when ALL of it is small talk from the lexicon below -- greetings, thanks, farewells,
"how are you?", acknowledgements ("ok", "great"), questions about the assistant itself ("who are
you?") -- with at most a few words like "there", "so much", "again". Anything else, including any
small talk followed by a real question ("hi, how do volcanoes erupt?"), and anything ambiguous such as
"yes", "more" or "help", is RETRIEVAL, which is always a safe answer.
"""

from __future__ import annotations

import re
import unicodedata
from enum import StrEnum


class Intent(StrEnum):
    CONVERSATIONAL = "conversational"
    RETRIEVAL = "retrieval"


# Longest message (in words) still considered small talk; longer ones go to retrieval.
MAX_WORDS = 12

_GREETING = (
    r"hi+|hello+|hey+|heya|hiya|howdy|hallo|hola|bonjour|ciao|salut|servus|moin|yo|greetings|welcome( back)?"
    r"|good (morning|afternoon|evening|day)|morning|evening|afternoon"
    r"|what'?s up|whats? up|wass?up|sup"
    r"|(nice|pleased|glad|good) to (meet|see) you( too)?"
)
_THANKS = (
    r"(many |great |ok |okay )?(thanks|thank you|thank u|thankyou|thanx|thnx|thx|ty|tysm|tyvm|cheers"
    r"|merci( beaucoup)?|danke( schön| schoen| sehr)?|gracias|grazie)"
    r"( (so|very) much| a (lot|bunch|million|ton)| again| anyway| heaps)?"
    r"( for (the|your|this|that|all the|all your|my|all) (help|answer|answers|info|information|explanation"
    r"|response|reply|replies|time|chat|assistance|support|update))?"
    r"|much appreciated|(i |really )?appreciate (it|that|this|your help|the help)"
    r"|(that|this|it) (helps|helped|was helpful|is helpful|was useful|is useful)"
    r"|(that'?s|that is|this is|very|super|really) (very |really |super )?(helpful|useful)"
)
_HOW_ARE_YOU = (
    r"how are (you|u|ya|things)( doing| going)?( today| now)?"
    r"|how (r|are) (u|you)|how'?s it going|how is it going|how'?s (life|everything|things|your day)"
    r"|how is (life|everything|your day)|how (was|has been) your day|how have you been|how do you do"
    r"|how are you doing today|what'?s new|what is new|hope you('?re| are) (well|good|doing well|fine)"
    r"|are you (ok|okay|well|there|alive|awake)|you (ok|okay|there)|(i'?m|i am) (fine|good|great|well|ok|okay)"
    r"( too| thanks| thank you)?|(and|how about|what about) you"
)
_FAREWELL = (
    r"bye+( bye)?|goodbye|good bye|bye for now|see (you|ya|u)( later| soon| tomorrow| around)?|cya|later"
    r"|good ?night|nighty night|take care|have a (nice|good|great|lovely) (day|evening|night|weekend|one)"
    r"|talk (to you )?(later|soon)|ttyl|catch you later|farewell|adios|au revoir|tschüss|tschuess|ciao"
    r"|(gotta|got to|i have to|i need to|i must) go|that'?s all( for (now|today))?"
)
_ACK = (
    r"ok+|okay|okey|k|kk|cool|great|nice|awesome|perfect|excellent|wonderful|fantastic|amazing|brilliant|neat"
    r"|good|very good|fine|alright|all right|got it|gotcha|i see|understood|makes sense|sounds good|noted"
    r"|(that'?s|that is|this is|it'?s) (great|good|nice|cool|awesome|perfect|fine|interesting|amazing|clear)"
    r"|good (job|answer|bot|work)|well done|nice (one|work)|lol|lmao|haha+|hehe+|wow|no worries|no problem|np"
    r"|my pleasure|you'?re welcome|welcome|sorry|oops|never ?mind|nvm"
)
_ABOUT_YOU = (
    r"who are (you|u)|what are (you|u)|what'?s your name|what is your name|who am i (talking|speaking) (to|with)"
    r"|are you (a bot|a robot|an ai|an assistant|human|a human|real)|who (made|built|created) you"
)
_VOCATIVE = (
    r"there|all|everyone|everybody|folks|guys|team|friend|mate|buddy|pal|bot|assistant|again|too|man|dude"
    r"|both|so much|very much|a lot"
)
_INTERJECTION = r"oh|ah|aha|ahh|well|yeah|yes|yep|hmm+|um+|so|and|but"

_PHRASE = rf"(?:{_GREETING}|{_THANKS}|{_HOW_ARE_YOU}|{_FAREWELL}|{_ACK}|{_ABOUT_YOU})(?: (?:{_VOCATIVE}))*"
# A segment: optional interjections, then one or more small-talk phrases ("ok thanks bye").
_SEGMENT = re.compile(rf"(?:(?:{_INTERJECTION}) )*{_PHRASE}(?: (?:and )?{_PHRASE})*")
# An interjection alone ("yes", "so") is not enough: it may answer the assistant's own question.
_ONLY_INTERJECTIONS = re.compile(rf"(?:(?:{_INTERJECTION}) ?)+")

_EMOTICON = re.compile(r"(?<!\w)(?:[:;=8xX][-']?[()\[\]dDpP3/\\|*oO]+|<3+|\^_?\^|:\w+:)(?!\w)")
_SEPARATORS = re.compile(r"[.!?,;:\n\r\t…~]+| - | — ")


def _normalize(message: str) -> tuple[list[str], bool]:
    """Lower-cased segments of words, and whether the message held emoji/emoticons."""
    text = unicodedata.normalize("NFKC", message).replace("\u2019", "'").replace("`", "'").lower()
    text, n_emoticons = _EMOTICON.subn(" ", text)
    kept = []
    had_symbol = n_emoticons > 0
    for ch in text:
        cat = unicodedata.category(ch)
        if cat.startswith(("L", "N")) or ch in " '.!?,;:\n\r\t…~-—":
            kept.append(ch)
        elif cat in ("So", "Sk", "Cf", "Mn") or ch in "\ufe0f\u200d":
            had_symbol = had_symbol or cat == "So"
            kept.append(" ")
        else:
            kept.append(" ")
    segments = [" ".join(seg.split()) for seg in _SEPARATORS.split("".join(kept))]
    return [seg.replace("-", " ").strip() for seg in segments if seg.strip(" -'")], had_symbol


def classify(message: str) -> Intent:
    """CONVERSATIONAL for pure small talk, RETRIEVAL for everything else (the safe default)."""
    segments, had_symbol = _normalize(message)
    if not segments:
        # Only emoji ("👋", "🙂👍") is small talk; only punctuation ("?") or nothing is not.
        return Intent.CONVERSATIONAL if had_symbol else Intent.RETRIEVAL
    words = sum(len(seg.split()) for seg in segments)
    if words > MAX_WORDS:
        return Intent.RETRIEVAL
    segments = [" ".join(seg.split()) for seg in segments]
    if all(_ONLY_INTERJECTIONS.fullmatch(seg) for seg in segments):
        return Intent.RETRIEVAL
    for seg in segments:
        if _ONLY_INTERJECTIONS.fullmatch(seg):
            continue  # "yes" next to small talk ("yes, thanks!") is fine
        if not _SEGMENT.fullmatch(seg):
            return Intent.RETRIEVAL
    return Intent.CONVERSATIONAL


def is_conversational(message: str) -> bool:
    return classify(message) is Intent.CONVERSATIONAL
