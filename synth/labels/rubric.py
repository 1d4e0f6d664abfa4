"""The 0-5 quality scale: the teacher's rubric prompts (FineWeb-Edu's additive rubric in 9 languages), the answer
choices, and the strict and relaxed tier thresholds Qwen2 compared."""

from __future__ import annotations

from synth.seeds import language_name

RUBRIC_VERSION = "edu-additive-v1"
"""Version of the rubric prompts: part of every request's cache key and of the label stage's config."""
SCORE_CHOICES = ("0", "1", "2", "3", "4", "5")
STRICT_THRESHOLD = 3.0
RELAXED_THRESHOLD = 2.0


# ------------------------------------------------------------------------------------------------------- rubrics

# FineWeb-Edu's additive rubric (Penedo et al. 2024), shortened, widened from "school" to "educational or
# informational value" and answered with one digit. Each: the task with the five criteria, the label in front of
# the document, and the answer instruction.
RUBRICS: dict[str, dict[str, str]] = {
    "en": {
        "task": (
            "Rate the educational and informational value of the document below on an additive scale from 0 to 5. "
            "Start at 0 and add one point for each criterion the document meets:\n"
            "1. It gives some basic information on a topic, even if mixed with ads or irrelevant content.\n"
            "2. It covers elements useful for learning, but superficially or in a disorganised way.\n"
            "3. It is coherent and introduces key concepts a learner could use, though it may be incomplete.\n"
            "4. It is clearly written, well organised and highly useful for learning, with little irrelevant "
            "content.\n"
            "5. It is outstanding: detailed, accurate and easy to follow, like an excellent textbook or tutorial.\n"
            "Junk, spam, navigation menus, lists of links and incoherent text get 0."
        ),
        "document": "Document:",
        "answer": "Answer with a single digit from 0 to 5 and nothing else.",
    },
    "zh": {
        "task": (
            "请按 0 到 5 分的累加标准，评估下面文档的教育和信息价值。从 0 分开始，每满足一条标准加 1 分：\n"
            "1. 提供了某个主题的一些基本信息，即使夹杂广告或无关内容。\n"
            "2. 涉及对学习有用的内容，但比较肤浅或缺乏条理。\n"
            "3. 内容连贯，介绍了学习者可以使用的关键概念，尽管可能不够完整。\n"
            "4. 写得清楚、组织良好，对学习非常有用，几乎没有无关内容。\n"
            "5. 非常出色：详细、准确、易于理解，如同优秀的教材或教程。\n"
            "垃圾内容、垃圾广告、导航菜单、链接列表和不连贯的文字得 0 分。"
        ),
        "document": "文档：",
        "answer": "只回答一个 0 到 5 的数字，不要输出其他内容。",
    },
    "de": {
        "task": (
            "Bewerte den Bildungs- und Informationswert des folgenden Dokuments auf einer additiven Skala von 0 bis 5. "
            "Beginne bei 0 und vergib für jedes erfüllte Kriterium einen Punkt:\n"
            "1. Es liefert grundlegende Informationen zu einem Thema, auch wenn Werbung oder Irrelevantes dabei ist.\n"
            "2. Es behandelt Inhalte, die beim Lernen nützlich sind, aber oberflächlich oder ungeordnet.\n"
            "3. Es ist zusammenhängend und führt wichtige Begriffe ein, die ein Lernender nutzen kann, auch wenn "
            "es unvollständig sein mag.\n"
            "4. Es ist klar geschrieben, gut gegliedert und für das Lernen sehr nützlich, mit wenig Irrelevantem.\n"
            "5. Es ist herausragend: ausführlich, korrekt und leicht verständlich, wie ein ausgezeichnetes Lehrbuch "
            "oder Tutorial.\n"
            "Müll, Spam, Navigationsmenüs, Linklisten und unzusammenhängender Text erhalten 0."
        ),
        "document": "Dokument:",
        "answer": "Antworte nur mit einer einzigen Ziffer von 0 bis 5.",
    },
    "fr": {
        "task": (
            "Évalue la valeur éducative et informative du document ci-dessous sur une échelle additive de 0 à 5. "
            "Pars de 0 et ajoute un point pour chaque critère rempli :\n"
            "1. Il donne quelques informations de base sur un sujet, même mêlées à de la publicité ou à du contenu "
            "hors sujet.\n"
            "2. Il aborde des éléments utiles pour apprendre, mais de façon superficielle ou désorganisée.\n"
            "3. Il est cohérent et présente des notions clés qu'un apprenant peut utiliser, même s'il est "
            "incomplet.\n"
            "4. Il est clairement rédigé, bien organisé et très utile pour apprendre, avec peu de contenu hors "
            "sujet.\n"
            "5. Il est exceptionnel : détaillé, exact et facile à suivre, comme un excellent manuel ou tutoriel.\n"
            "Les contenus sans valeur, le spam, les menus de navigation, les listes de liens et les textes "
            "incohérents obtiennent 0."
        ),
        "document": "Document :",
        "answer": "Réponds uniquement par un seul chiffre de 0 à 5.",
    },
    "es": {
        "task": (
            "Evalúa el valor educativo e informativo del documento siguiente en una escala aditiva de 0 a 5. "
            "Empieza en 0 y suma un punto por cada criterio que cumpla:\n"
            "1. Ofrece alguna información básica sobre un tema, aunque esté mezclada con publicidad o contenido "
            "irrelevante.\n"
            "2. Trata elementos útiles para aprender, pero de forma superficial o desordenada.\n"
            "3. Es coherente e introduce conceptos clave que un estudiante podría usar, aunque sea incompleto.\n"
            "4. Está escrito con claridad, bien organizado y es muy útil para aprender, con poco contenido "
            "irrelevante.\n"
            "5. Es excepcional: detallado, correcto y fácil de seguir, como un excelente libro de texto o tutorial.\n"
            "La basura, el spam, los menús de navegación, las listas de enlaces y el texto incoherente reciben 0."
        ),
        "document": "Documento:",
        "answer": "Responde solo con un único dígito del 0 al 5.",
    },
    "ja": {
        "task": (
            "以下の文書の教育的・情報的価値を、0〜5 の加点方式で評価してください。"
            "0 点から始め、満たす基準ごとに 1 点を加えます。\n"
            "1. 広告や無関係な内容が混じっていても、あるテーマについて基本的な情報を提供している。\n"
            "2. 学習に役立つ要素を扱っているが、表面的またはまとまりがない。\n"
            "3. 一貫しており、学習者が活用できる重要な概念を紹介している。ただし不完全な場合もある。\n"
            "4. 明確に書かれ、よく整理されており、学習に非常に役立つ。無関係な内容はほとんどない。\n"
            "5. 非常に優れている：詳しく、正確で、分かりやすく、優れた教科書やチュートリアルのようである。\n"
            "ごみ、スパム、ナビゲーションメニュー、リンクの羅列、支離滅裂な文章は 0 点です。"
        ),
        "document": "文書：",
        "answer": "0 から 5 の数字を 1 つだけ答えてください。それ以外は出力しないでください。",
    },
    "ru": {
        "task": (
            "Оцени образовательную и информационную ценность документа ниже по накопительной шкале от 0 до 5. "
            "Начни с 0 и добавляй один балл за каждый выполненный критерий:\n"
            "1. Документ даёт базовую информацию по какой-либо теме, даже вперемешку с рекламой или посторонним "
            "содержимым.\n"
            "2. Он затрагивает полезные для обучения сведения, но поверхностно или бессистемно.\n"
            "3. Он связный и вводит ключевые понятия, которые может использовать учащийся, хотя может быть "
            "неполным.\n"
            "4. Он ясно написан, хорошо организован и очень полезен для обучения, постороннего содержимого мало.\n"
            "5. Он превосходен: подробный, точный и понятный, как отличный учебник или руководство.\n"
            "Мусор, спам, меню навигации, списки ссылок и бессвязный текст получают 0."
        ),
        "document": "Документ:",
        "answer": "Ответь только одной цифрой от 0 до 5.",
    },
    "pt": {
        "task": (
            "Avalie o valor educativo e informativo do documento abaixo numa escala aditiva de 0 a 5. "
            "Comece em 0 e some um ponto por cada critério cumprido:\n"
            "1. Dá alguma informação básica sobre um tema, mesmo que misturada com publicidade ou conteúdo "
            "irrelevante.\n"
            "2. Aborda elementos úteis para aprender, mas de forma superficial ou desorganizada.\n"
            "3. É coerente e apresenta conceitos-chave que um estudante poderia usar, ainda que incompleto.\n"
            "4. Está escrito com clareza, bem organizado e é muito útil para aprender, com pouco conteúdo "
            "irrelevante.\n"
            "5. É excelente: detalhado, correto e fácil de acompanhar, como um ótimo livro didático ou tutorial.\n"
            "Lixo, spam, menus de navegação, listas de links e texto incoerente recebem 0."
        ),
        "document": "Documento:",
        "answer": "Responda apenas com um único dígito de 0 a 5.",
    },
    "it": {
        "task": (
            "Valuta il valore educativo e informativo del documento qui sotto su una scala additiva da 0 a 5. "
            "Parti da 0 e aggiungi un punto per ogni criterio soddisfatto:\n"
            "1. Fornisce alcune informazioni di base su un argomento, anche se mescolate a pubblicità o contenuti "
            "irrilevanti.\n"
            "2. Tratta elementi utili per imparare, ma in modo superficiale o disordinato.\n"
            "3. È coerente e introduce concetti chiave che uno studente potrebbe usare, anche se incompleto.\n"
            "4. È scritto con chiarezza, ben organizzato e molto utile per imparare, con pochi contenuti "
            "irrilevanti.\n"
            "5. È eccezionale: dettagliato, corretto e facile da seguire, come un ottimo libro di testo o tutorial.\n"
            "Contenuti spazzatura, spam, menu di navigazione, elenchi di link e testo incoerente ricevono 0."
        ),
        "document": "Documento:",
        "answer": "Rispondi solo con una singola cifra da 0 a 5.",
    },
}
CODE_NOTE = "The document is source code: rate its value for learning to program."


def base_language(lang: str | None) -> str | None:
    """ISO 639-1 part of a language tag: ``de-DE``, ``zh_CN``, ``pt-br`` -> ``de``, ``zh``, ``pt``."""
    return lang.replace("_", "-").split("-")[0].lower() or None if lang else None


def rubric_messages(text: str, lang: str | None, domain: str | None = None) -> list[dict[str, str]]:
    """The rating prompt for one document: the rubric in the document's language (English plus a note on the
    language, or on source code, when there is no translation), then the document, then the answer format."""
    lang = base_language(lang)
    rubric = RUBRICS.get(lang or "", RUBRICS["en"])
    parts = [rubric["task"]]
    if domain == "code" or lang == "code":
        parts.append(CODE_NOTE)
    elif lang and lang not in RUBRICS:
        parts.append(f"The document is in {language_name(lang)}.")
    parts.append(f"{rubric['document']}\n<<<\n{text}\n>>>")
    parts.append(rubric["answer"])
    return [{"role": "user", "content": "\n\n".join(parts)}]
