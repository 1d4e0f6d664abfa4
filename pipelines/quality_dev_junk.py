"""The junk of the quality development set (``pipelines.quality_dev_set``): text made the way web junk looks
(boilerplate, cookie banners, menus, keyword spam, scrambled text, word salad, mojibake, repeated lines, short
fragments), seeded, in 13 languages, every record labelled ``drop`` (``junk_documents``).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from pipelines.demo_corpus import (
    TEXT,
    Document,
)
from pipelines.quality_dev_sources import Labelled

# --- junk -------------------------------------------------------------------------------------------------------

JUNK_LANGS = ("en", "de", "fr", "es", "it", "pt", "nl", "ru", "pl", "cs", "ja", "zh", "ko")
CJK_JUNK_LANGS = ("ja", "zh")  # written without spaces: scrambled and salad work on characters
JUNK_KINDS = (
    "boilerplate",
    "cookie_banner",
    "menu",
    "keyword_spam",
    "scrambled",
    "word_salad",
    "encoding_garbage",
    "repeated_lines",
    "short_fragment",
)
# Real pages of each language that scrambled/word-salad/mojibake junk is made from: (package, declared language).
MATERIAL = {
    "en": "aptitude-doc-en", "de": "developers-reference-de", "fr": "aptitude-doc-fr", "es": "aptitude-doc-es",
    "it": "aptitude-doc-it", "pt": "apt-doc", "nl": "aptitude-doc-nl", "ru": "aptitude-doc-ru", "pl": "apt-doc",
    "cs": "aptitude-doc-cs", "ja": "aptitude-doc-ja", "zh": "libreoffice-help-zh-cn", "ko": "libreoffice-help-ko",
}  # fmt: skip

# Phrase pools, "|"-separated, per language: what sites print around (or instead of) their content.
PHRASES: dict[str, dict[str, str]] = {
    "en": {
        "cookie": "We use cookies to improve your experience on our website.|By continuing to browse the site, you "
        "agree to our use of cookies.|This website uses cookies to personalise content and ads, to provide social "
        "media features and to analyse our traffic.|We also share information about your use of our site with our "
        "social media, advertising and analytics partners.|You can change your preferences at any time.",
        "buttons": "Accept all|Reject all|Manage preferences|Cookie settings|OK, got it|Learn more|Privacy policy",
        "footer": "All rights reserved.|Privacy Policy|Terms of Use|Terms and Conditions|Contact us|Sitemap|"
        "Imprint|Accessibility|Careers|Press|Advertise with us|Powered by WordPress",
        "social": "Share this:|Facebook|Twitter|LinkedIn|WhatsApp|Pinterest|Email|Print|Like this:|Loading...",
        "comment": "Leave a Reply|Your email address will not be published.|Required fields are marked *|Name *|"
        "Email *|Website|Save my name, email, and website in this browser for the next time I comment.|Post Comment",
        "account": "Log in|Sign up|Forgot your password?|Remember me|Create an account|My account|Logout|Register",
        "newsletter": "Subscribe to our newsletter|Enter your email address|Subscribe|Get the latest news and "
        "offers straight to your inbox.|Unsubscribe at any time.",
        "related": "Related posts|You may also like|Recent Posts|Popular Posts|Archives|Categories|Tags|"
        "Previous post|Next post|Read more",
        "menu": "Home|About us|Products|Services|Blog|News|Contact|Shop|Cart|Checkout|Support|FAQ|Events|Gallery|"
        "Team|Pricing|Downloads|Partners|Jobs|Search|Men|Women|Kids|Sale|New arrivals|Brands|Gift cards",
        "spam_topics": "cheap flights|hotel deals|car insurance|payday loans|online casino|replica watches|weight "
        "loss pills|crypto trading|used cars|cheap shoes|web hosting|seo services|phone cases|free movies",
        "spam_mods": "best|cheap|buy|online|free|discount|top 10|review|near me|2024|sale|coupon|official|fast",
        "fragments": "Loading...|404 Not Found|Page not found|Read more|Click here|Please enable JavaScript to "
        "view this page.|Error|Sorry, no results were found.|Coming soon|Under construction|Back to top",
    },
    "de": {
        "cookie": "Wir verwenden Cookies, um Ihnen das beste Nutzererlebnis bieten zu können.|Wenn Sie diese "
        "Website weiter nutzen, stimmen Sie der Verwendung von Cookies zu.|Einige von ihnen sind essenziell, "
        "während andere uns helfen, diese Website und Ihre Erfahrung zu verbessern.|Weitere Informationen finden "
        "Sie in unserer Datenschutzerklärung.",
        "buttons": "Alle akzeptieren|Alle ablehnen|Einstellungen|Nur essenzielle Cookies akzeptieren|"
        "Individuelle Datenschutzeinstellungen|Datenschutzerklärung|Impressum",
        "footer": "Alle Rechte vorbehalten.|Impressum|Datenschutz|AGB|Kontakt|Sitemap|Barrierefreiheit|Karriere|"
        "Presse|Versand und Zahlung|Widerrufsrecht",
        "social": "Teilen:|Facebook|Twitter|LinkedIn|WhatsApp|Pinterest|E-Mail|Drucken|Gefällt mir:|Lädt...",
        "comment": "Schreibe einen Kommentar|Deine E-Mail-Adresse wird nicht veröffentlicht.|Erforderliche "
        "Felder sind mit * markiert|Name *|E-Mail *|Website|Kommentar abschicken",
        "account": "Anmelden|Registrieren|Passwort vergessen?|Angemeldet bleiben|Mein Konto|Abmelden",
        "newsletter": "Newsletter abonnieren|Ihre E-Mail-Adresse|Jetzt anmelden|Abmeldung jederzeit möglich.",
        "related": "Ähnliche Beiträge|Das könnte Sie auch interessieren|Neueste Beiträge|Archiv|Kategorien|"
        "Schlagwörter|Vorheriger Beitrag|Nächster Beitrag|Weiterlesen",
        "menu": "Startseite|Über uns|Produkte|Leistungen|Blog|Aktuelles|Kontakt|Shop|Warenkorb|Kasse|Hilfe|"
        "Termine|Galerie|Team|Preise|Downloads|Partner|Jobs|Suche|Herren|Damen|Kinder|Angebote|Marken",
        "spam_topics": "billige Flüge|Hotel Angebote|Kfz Versicherung|Kredit ohne Schufa|Online Casino|"
        "Replica Uhren|Abnehmen schnell|Krypto kaufen|Gebrauchtwagen|Schuhe günstig|Webhosting",
        "spam_mods": "beste|günstig|kaufen|online|kostenlos|Rabatt|Top 10|Test|in der Nähe|2024|Angebot|Gutschein",
        "fragments": "Wird geladen...|404 Seite nicht gefunden|Weiterlesen|Hier klicken|Bitte aktivieren Sie "
        "JavaScript.|Fehler|Keine Ergebnisse gefunden.|Demnächst verfügbar|Nach oben",
    },
    "fr": {
        "cookie": "Nous utilisons des cookies pour améliorer votre expérience sur notre site.|En poursuivant "
        "votre navigation, vous acceptez l'utilisation de cookies.|Ces cookies nous permettent de mesurer "
        "l'audience et de vous proposer des publicités personnalisées.|Vous pouvez modifier vos choix à tout "
        "moment.",
        "buttons": "Tout accepter|Tout refuser|Paramétrer les cookies|Continuer sans accepter|En savoir plus|"
        "Politique de confidentialité",
        "footer": "Tous droits réservés.|Mentions légales|Politique de confidentialité|CGV|Contact|Plan du site|"
        "Accessibilité|Recrutement|Presse|Gestion des cookies",
        "social": "Partager :|Facebook|Twitter|LinkedIn|WhatsApp|Pinterest|E-mail|Imprimer|J'aime :|Chargement…",
        "comment": "Laisser un commentaire|Votre adresse e-mail ne sera pas publiée.|Les champs obligatoires "
        "sont indiqués avec *|Nom *|E-mail *|Site web|Laisser un commentaire",
        "account": "Se connecter|S'inscrire|Mot de passe oublié ?|Se souvenir de moi|Mon compte|Déconnexion",
        "newsletter": "Inscrivez-vous à notre newsletter|Votre adresse e-mail|S'abonner|Désinscription à tout moment.",
        "related": "Articles similaires|Vous aimerez aussi|Articles récents|Archives|Catégories|Étiquettes|"
        "Article précédent|Article suivant|Lire la suite",
        "menu": "Accueil|Qui sommes-nous|Produits|Services|Blog|Actualités|Contact|Boutique|Panier|Commande|Aide|"
        "Événements|Galerie|Équipe|Tarifs|Téléchargements|Partenaires|Emplois|Recherche|Homme|Femme|Enfant|Soldes",
        "spam_topics": "vols pas cher|hôtel promo|assurance auto|crédit rapide|casino en ligne|montres replica|"
        "perdre du poids|acheter bitcoin|voiture occasion|chaussures pas cher|hébergement web",
        "spam_mods": "meilleur|pas cher|acheter|en ligne|gratuit|promo|top 10|avis|près de chez moi|2024|soldes",
        "fragments": "Chargement…|Erreur 404 page introuvable|Lire la suite|Cliquez ici|Veuillez activer "
        "JavaScript.|Erreur|Aucun résultat.|Bientôt disponible|Retour en haut",
    },
    "es": {
        "cookie": "Utilizamos cookies propias y de terceros para mejorar nuestros servicios.|Si continúa "
        "navegando, consideramos que acepta su uso.|Puede cambiar la configuración u obtener más información en "
        "nuestra política de cookies.|Algunas cookies son necesarias para el funcionamiento del sitio.",
        "buttons": "Aceptar todas|Rechazar todas|Configurar cookies|Más información|Política de privacidad",
        "footer": "Todos los derechos reservados.|Aviso legal|Política de privacidad|Términos y condiciones|"
        "Contacto|Mapa del sitio|Accesibilidad|Trabaja con nosotros|Prensa",
        "social": "Compartir:|Facebook|Twitter|LinkedIn|WhatsApp|Pinterest|Correo electrónico|Imprimir|"
        "Me gusta:|Cargando...",
        "comment": "Deja una respuesta|Tu dirección de correo electrónico no será publicada.|Los campos "
        "obligatorios están marcados con *|Nombre *|Correo electrónico *|Web|Publicar el comentario",
        "account": "Iniciar sesión|Registrarse|¿Olvidaste tu contraseña?|Recordarme|Mi cuenta|Cerrar sesión",
        "newsletter": "Suscríbete a nuestro boletín|Tu correo electrónico|Suscribirse|Puedes darte de baja en "
        "cualquier momento.",
        "related": "Entradas relacionadas|También te puede interesar|Entradas recientes|Archivos|Categorías|"
        "Etiquetas|Entrada anterior|Entrada siguiente|Leer más",
        "menu": "Inicio|Quiénes somos|Productos|Servicios|Blog|Noticias|Contacto|Tienda|Carrito|Pago|Ayuda|"
        "Eventos|Galería|Equipo|Precios|Descargas|Socios|Empleo|Buscar|Hombre|Mujer|Niños|Ofertas|Marcas",
        "spam_topics": "vuelos baratos|ofertas de hotel|seguro de coche|préstamos rápidos|casino online|relojes "
        "réplica|adelgazar rápido|comprar bitcoin|coches de segunda mano|zapatos baratos",
        "spam_mods": "mejor|barato|comprar|online|gratis|descuento|top 10|opiniones|cerca de mí|2024|oferta",
        "fragments": "Cargando...|Error 404 página no encontrada|Leer más|Haga clic aquí|Por favor, active "
        "JavaScript.|Error|No se encontraron resultados.|Próximamente|Volver arriba",
    },
    "it": {
        "cookie": "Questo sito utilizza cookie tecnici e di profilazione.|Proseguendo nella navigazione "
        "acconsenti all'uso dei cookie.|Utilizziamo i cookie per personalizzare contenuti e annunci e per "
        "analizzare il nostro traffico.|Puoi modificare le tue preferenze in qualsiasi momento.",
        "buttons": "Accetta tutti|Rifiuta tutti|Personalizza|Maggiori informazioni|Informativa privacy",
        "footer": "Tutti i diritti riservati.|Note legali|Privacy policy|Termini e condizioni|Contatti|"
        "Mappa del sito|Accessibilità|Lavora con noi|P.IVA 01234567890",
        "social": "Condividi:|Facebook|Twitter|LinkedIn|WhatsApp|Pinterest|Email|Stampa|Mi piace:|Caricamento...",
        "comment": "Lascia un commento|Il tuo indirizzo email non sarà pubblicato.|I campi obbligatori sono "
        "contrassegnati *|Nome *|Email *|Sito web|Invia commento",
        "account": "Accedi|Registrati|Password dimenticata?|Ricordami|Il mio account|Esci",
        "newsletter": "Iscriviti alla newsletter|Il tuo indirizzo email|Iscriviti|Puoi annullare l'iscrizione "
        "in qualsiasi momento.",
        "related": "Articoli correlati|Potrebbe interessarti anche|Articoli recenti|Archivi|Categorie|Tag|"
        "Articolo precedente|Articolo successivo|Leggi tutto",
        "menu": "Home|Chi siamo|Prodotti|Servizi|Blog|Notizie|Contatti|Negozio|Carrello|Cassa|Assistenza|Eventi|"
        "Galleria|Team|Prezzi|Download|Partner|Lavora con noi|Cerca|Uomo|Donna|Bambini|Saldi|Marchi",
        "spam_topics": "voli economici|offerte hotel|assicurazione auto|prestiti veloci|casino online|orologi "
        "replica|dimagrire velocemente|comprare bitcoin|auto usate|scarpe economiche",
        "spam_mods": "migliore|economico|comprare|online|gratis|sconto|top 10|recensioni|vicino a me|2024|offerta",
        "fragments": "Caricamento...|Errore 404 pagina non trovata|Leggi tutto|Clicca qui|Abilita JavaScript "
        "per visualizzare la pagina.|Errore|Nessun risultato.|Prossimamente|Torna su",
    },
    "pt": {
        "cookie": "Utilizamos cookies para melhorar a sua experiência no nosso site.|Ao continuar a navegar, "
        "concorda com a utilização de cookies.|Usamos cookies para personalizar conteúdos e anúncios e para "
        "analisar o nosso tráfego.|Pode alterar as suas preferências a qualquer momento.",
        "buttons": "Aceitar todos|Rejeitar todos|Configurar cookies|Saber mais|Política de privacidade",
        "footer": "Todos os direitos reservados.|Aviso legal|Política de privacidade|Termos e condições|"
        "Contacto|Mapa do site|Acessibilidade|Trabalhe connosco|Imprensa",
        "social": "Partilhar:|Facebook|Twitter|LinkedIn|WhatsApp|Pinterest|E-mail|Imprimir|Gosto:|A carregar...",
        "comment": "Deixe um comentário|O seu endereço de email não será publicado.|Campos obrigatórios "
        "marcados com *|Nome *|Email *|Site|Publicar comentário",
        "account": "Entrar|Registar|Esqueceu a palavra-passe?|Lembrar-me|A minha conta|Sair",
        "newsletter": "Subscreva a nossa newsletter|O seu email|Subscrever|Pode cancelar a qualquer momento.",
        "related": "Artigos relacionados|Também pode gostar|Artigos recentes|Arquivo|Categorias|Etiquetas|"
        "Artigo anterior|Artigo seguinte|Ler mais",
        "menu": "Início|Sobre nós|Produtos|Serviços|Blog|Notícias|Contacto|Loja|Carrinho|Pagamento|Ajuda|"
        "Eventos|Galeria|Equipa|Preços|Transferências|Parceiros|Emprego|Pesquisar|Homem|Mulher|Criança|Promoções",
        "spam_topics": "voos baratos|promoções de hotel|seguro automóvel|crédito rápido|casino online|relógios "
        "réplica|emagrecer rápido|comprar bitcoin|carros usados|sapatos baratos",
        "spam_mods": "melhor|barato|comprar|online|grátis|desconto|top 10|análise|perto de mim|2024|promoção",
        "fragments": "A carregar...|Erro 404 página não encontrada|Ler mais|Clique aqui|Por favor ative o "
        "JavaScript.|Erro|Nenhum resultado encontrado.|Brevemente|Voltar ao topo",
    },
    "nl": {
        "cookie": "Wij gebruiken cookies om uw ervaring op onze website te verbeteren.|Door verder te surfen "
        "gaat u akkoord met het gebruik van cookies.|Met deze cookies kunnen wij en derde partijen uw "
        "internetgedrag volgen.|U kunt uw voorkeuren op elk moment wijzigen.",
        "buttons": "Alles accepteren|Alles weigeren|Voorkeuren beheren|Meer informatie|Privacybeleid",
        "footer": "Alle rechten voorbehouden.|Disclaimer|Privacyverklaring|Algemene voorwaarden|Contact|"
        "Sitemap|Toegankelijkheid|Vacatures|Pers|KvK 12345678",
        "social": "Delen:|Facebook|Twitter|LinkedIn|WhatsApp|Pinterest|E-mail|Afdrukken|Vind ik leuk:|Laden...",
        "comment": "Geef een reactie|Je e-mailadres wordt niet gepubliceerd.|Vereiste velden zijn gemarkeerd "
        "met *|Naam *|E-mail *|Website|Reactie plaatsen",
        "account": "Inloggen|Registreren|Wachtwoord vergeten?|Onthoud mij|Mijn account|Uitloggen",
        "newsletter": "Schrijf je in voor onze nieuwsbrief|Je e-mailadres|Aanmelden|Je kunt je op elk moment afmelden.",
        "related": "Gerelateerde berichten|Dit vind je misschien ook leuk|Recente berichten|Archief|"
        "Categorieën|Tags|Vorig bericht|Volgend bericht|Lees meer",
        "menu": "Home|Over ons|Producten|Diensten|Blog|Nieuws|Contact|Winkel|Winkelwagen|Afrekenen|Klantenservice|"
        "Evenementen|Galerij|Team|Prijzen|Downloads|Partners|Vacatures|Zoeken|Heren|Dames|Kinderen|Uitverkoop",
        "spam_topics": "goedkope vluchten|hotel aanbiedingen|autoverzekering|snel lenen|online casino|replica "
        "horloges|snel afvallen|bitcoin kopen|tweedehands auto|goedkope schoenen",
        "spam_mods": "beste|goedkoop|kopen|online|gratis|korting|top 10|review|in de buurt|2024|aanbieding",
        "fragments": "Laden...|404 Pagina niet gevonden|Lees meer|Klik hier|Schakel JavaScript in.|Fout|"
        "Geen resultaten gevonden.|Binnenkort beschikbaar|Terug naar boven",
    },
    "ru": {
        "cookie": "Мы используем файлы cookie, чтобы улучшить работу сайта.|Продолжая пользоваться сайтом, вы "
        "соглашаетесь с использованием файлов cookie.|Файлы cookie помогают нам показывать вам персональные "
        "предложения и анализировать трафик.|Вы можете изменить настройки в любое время.",
        "buttons": "Принять все|Отклонить|Настройки cookie|Подробнее|Политика конфиденциальности",
        "footer": "Все права защищены.|Политика конфиденциальности|Пользовательское соглашение|Контакты|"
        "Карта сайта|Вакансии|Пресс-центр|Реклама на сайте|Оплата и доставка",
        "social": "Поделиться:|ВКонтакте|Одноклассники|Telegram|WhatsApp|Facebook|Twitter|Email|Печать|Загрузка...",
        "comment": "Добавить комментарий|Ваш адрес email не будет опубликован.|Обязательные поля помечены *|"
        "Имя *|Email *|Сайт|Отправить комментарий",
        "account": "Войти|Регистрация|Забыли пароль?|Запомнить меня|Личный кабинет|Выйти",
        "newsletter": "Подпишитесь на нашу рассылку|Ваш email|Подписаться|Отписаться можно в любой момент.",
        "related": "Похожие записи|Вам также может понравиться|Свежие записи|Архивы|Рубрики|Метки|"
        "Предыдущая запись|Следующая запись|Читать далее",
        "menu": "Главная|О компании|Продукция|Услуги|Блог|Новости|Контакты|Магазин|Корзина|Оформление заказа|"
        "Помощь|События|Галерея|Команда|Цены|Загрузки|Партнёры|Вакансии|Поиск|Мужчинам|Женщинам|Детям|Акции",
        "spam_topics": "дешевые авиабилеты|скидки на отели|страхование авто|займ без отказа|онлайн казино|"
        "реплики часов|быстро похудеть|купить биткоин|б/у автомобили|дешевая обувь|хостинг",
        "spam_mods": "лучший|дешево|купить|онлайн|бесплатно|скидка|топ 10|отзывы|рядом|2024|акция|официальный",
        "fragments": "Загрузка...|Ошибка 404 страница не найдена|Читать далее|Нажмите здесь|Включите JavaScript "
        "в браузере.|Ошибка|Ничего не найдено.|Скоро|Наверх",
    },
    "pl": {
        "cookie": "Ta strona używa plików cookies w celu świadczenia usług na najwyższym poziomie.|Dalsze "
        "korzystanie ze strony oznacza, że zgadzasz się na ich użycie.|Pliki cookies pomagają nam analizować "
        "ruch i dopasowywać reklamy.|Możesz zmienić ustawienia w każdej chwili.",
        "buttons": "Akceptuję wszystkie|Odrzuć wszystkie|Ustawienia cookies|Więcej informacji|Polityka prywatności",
        "footer": "Wszelkie prawa zastrzeżone.|Polityka prywatności|Regulamin|Kontakt|Mapa strony|Dostępność|"
        "Kariera|Dla mediów|NIP 1234567890",
        "social": "Udostępnij:|Facebook|Twitter|LinkedIn|WhatsApp|Pinterest|E-mail|Drukuj|Lubię to:|Wczytywanie...",
        "comment": "Dodaj komentarz|Twój adres e-mail nie zostanie opublikowany.|Wymagane pola są oznaczone *|"
        "Imię *|E-mail *|Witryna internetowa|Opublikuj komentarz",
        "account": "Zaloguj się|Zarejestruj się|Nie pamiętasz hasła?|Zapamiętaj mnie|Moje konto|Wyloguj",
        "newsletter": "Zapisz się do newslettera|Twój adres e-mail|Zapisz się|Możesz zrezygnować w każdej chwili.",
        "related": "Podobne wpisy|Może Cię także zainteresować|Najnowsze wpisy|Archiwa|Kategorie|Tagi|"
        "Poprzedni wpis|Następny wpis|Czytaj dalej",
        "menu": "Strona główna|O nas|Produkty|Usługi|Blog|Aktualności|Kontakt|Sklep|Koszyk|Kasa|Pomoc|"
        "Wydarzenia|Galeria|Zespół|Cennik|Do pobrania|Partnerzy|Praca|Szukaj|Mężczyźni|Kobiety|Dzieci|Wyprzedaż",
        "spam_topics": "tanie loty|oferty hoteli|ubezpieczenie samochodu|szybka pożyczka|kasyno online|repliki "
        "zegarków|szybkie odchudzanie|kup bitcoin|używane samochody|tanie buty",
        "spam_mods": "najlepszy|tanio|kup|online|za darmo|rabat|top 10|opinie|w pobliżu|2024|promocja",
        "fragments": "Wczytywanie...|Błąd 404 nie znaleziono strony|Czytaj dalej|Kliknij tutaj|Włącz obsługę "
        "JavaScript.|Błąd|Brak wyników.|Wkrótce|Do góry",
    },
    "cs": {
        "cookie": "Tento web používá soubory cookie k poskytování služeb a analýze návštěvnosti.|Používáním "
        "tohoto webu s tím souhlasíte.|Informace o tom, jak web používáte, sdílíme se svými partnery pro sociální "
        "média a reklamu.|Nastavení můžete kdykoli změnit.",
        "buttons": "Přijmout vše|Odmítnout vše|Nastavení cookies|Další informace|Zásady ochrany osobních údajů",
        "footer": "Všechna práva vyhrazena.|Ochrana osobních údajů|Obchodní podmínky|Kontakt|Mapa stránek|"
        "Přístupnost|Kariéra|Pro média|IČO 12345678",
        "social": "Sdílet:|Facebook|Twitter|LinkedIn|WhatsApp|Pinterest|E-mail|Tisk|To se mi líbí:|Načítání...",
        "comment": "Napsat komentář|Vaše e-mailová adresa nebude zveřejněna.|Vyžadované informace jsou "
        "označeny *|Jméno *|E-mail *|Webová stránka|Odeslat komentář",
        "account": "Přihlásit se|Registrace|Zapomenuté heslo?|Zapamatovat si mě|Můj účet|Odhlásit",
        "newsletter": "Přihlaste se k odběru novinek|Váš e-mail|Odebírat|Odhlásit se můžete kdykoli.",
        "related": "Související články|Mohlo by vás zajímat|Nejnovější příspěvky|Archivy|Rubriky|Štítky|"
        "Předchozí příspěvek|Další příspěvek|Číst dále",
        "menu": "Úvod|O nás|Produkty|Služby|Blog|Novinky|Kontakt|Obchod|Košík|Pokladna|Nápověda|Akce|Galerie|"
        "Tým|Ceník|Ke stažení|Partneři|Kariéra|Hledat|Muži|Ženy|Děti|Výprodej|Značky",
        "spam_topics": "levné letenky|hotely akce|pojištění auta|rychlá půjčka|online kasino|repliky hodinek|"
        "rychlé hubnutí|koupit bitcoin|ojetá auta|levné boty",
        "spam_mods": "nejlepší|levně|koupit|online|zdarma|sleva|top 10|recenze|v okolí|2024|akce",
        "fragments": "Načítání...|Chyba 404 stránka nenalezena|Číst dále|Klikněte zde|Povolte JavaScript.|"
        "Chyba|Nic nenalezeno.|Již brzy|Nahoru",
    },
    "ja": {
        "cookie": "当サイトでは、お客様により良いサービスを提供するためにクッキーを使用しています。|"
        "サイトの閲覧を続けることで、クッキーの使用に同意したものとみなされます。|"
        "クッキーはアクセス解析や広告配信のために利用されます。|設定はいつでも変更できます。",
        "buttons": "すべて同意する|拒否する|クッキー設定|詳細はこちら|プライバシーポリシー",
        "footer": "無断転載を禁じます。|プライバシーポリシー|利用規約|お問い合わせ|サイトマップ|会社概要|"
        "採用情報|特定商取引法に基づく表記|運営会社",
        "social": "シェアする|Facebook|Twitter|LINE|はてなブックマーク|Pocket|メール|印刷|いいね：|読み込み中...",
        "comment": "コメントを残す|メールアドレスが公開されることはありません。|必須項目には印がついています *|"
        "名前 *|メール *|サイト|コメントを送信",
        "account": "ログイン|新規会員登録|パスワードをお忘れの方|ログイン状態を保持する|マイページ|ログアウト",
        "newsletter": "メールマガジン登録|メールアドレスを入力|登録する|配信停止はいつでも可能です。",
        "related": "関連記事|こちらの記事もおすすめ|最近の投稿|アーカイブ|カテゴリー|タグ|前の記事|次の記事|続きを読む",
        "menu": "ホーム|会社概要|製品情報|サービス|ブログ|お知らせ|お問い合わせ|ショップ|カート|購入手続き|"
        "サポート|イベント|ギャラリー|スタッフ|料金|ダウンロード|パートナー|採用|検索|メンズ|レディース|キッズ|セール",
        "spam_topics": "格安航空券|ホテル予約|自動車保険|即日融資|オンラインカジノ|スーパーコピー時計|"
        "ダイエット サプリ|ビットコイン 購入|中古車|激安 靴",
        "spam_mods": "最安値|激安|通販|無料|おすすめ|ランキング|口コミ|近く|2024|送料無料|公式|比較",
        "fragments": "読み込み中...|404 ページが見つかりません|続きを読む|こちらをクリック|"
        "JavaScriptを有効にしてください。|エラー|該当する結果はありません。|近日公開|ページの先頭へ",
    },
    "zh": {
        "cookie": "我们使用Cookie来改善您在本网站上的体验。|继续浏览本网站即表示您同意我们使用Cookie。|"
        "这些Cookie用于分析网站流量和为您提供个性化广告。|您可以随时更改您的设置。",
        "buttons": "全部接受|全部拒绝|Cookie设置|了解更多|隐私政策",
        "footer": "版权所有|隐私政策|使用条款|联系我们|网站地图|关于我们|招聘信息|京ICP备12345678号|友情链接",
        "social": "分享到：|微信|微博|QQ空间|豆瓣|Facebook|Twitter|复制链接|打印|加载中...",
        "comment": "发表评论|您的电子邮箱地址不会被公开。|必填项已用 * 标注|昵称 *|邮箱 *|网站|提交评论",
        "account": "登录|注册|忘记密码？|记住我|个人中心|退出",
        "newsletter": "订阅我们的新闻|请输入您的邮箱|订阅|您可以随时取消订阅。",
        "related": "相关文章|猜你喜欢|最新文章|文章归档|分类目录|标签|上一篇|下一篇|阅读全文",
        "menu": "首页|关于我们|产品中心|服务项目|博客|新闻动态|联系我们|商城|购物车|结算|帮助中心|活动|"
        "相册|团队|价格|下载|合作伙伴|招聘|搜索|男装|女装|童装|特价",
        "spam_topics": "特价机票|酒店预订|汽车保险|网上贷款|网上赌场|高仿手表|快速减肥|比特币购买|二手车|便宜鞋子",
        "spam_mods": "最好|便宜|购买|在线|免费|优惠|排行榜|评测|附近|2024|正品|官网|包邮",
        "fragments": "加载中...|404 页面不存在|阅读全文|点击这里|请启用JavaScript。|错误|没有找到相关结果。|"
        "敬请期待|返回顶部",
    },
    "ko": {
        "cookie": "당사는 웹사이트 이용 경험을 개선하기 위해 쿠키를 사용합니다.|사이트를 계속 이용하시면 쿠키 "
        "사용에 동의하는 것으로 간주됩니다.|쿠키는 트래픽 분석과 맞춤형 광고 제공에 사용됩니다.|설정은 언제든지 "
        "변경할 수 있습니다.",
        "buttons": "모두 허용|모두 거부|쿠키 설정|자세히 보기|개인정보처리방침",
        "footer": "모든 권리 보유.|개인정보처리방침|이용약관|고객센터|사이트맵|회사소개|채용정보|"
        "사업자등록번호 123-45-67890|제휴문의",
        "social": "공유하기|카카오톡|페이스북|트위터|네이버 블로그|밴드|URL 복사|인쇄|좋아요|로딩 중...",
        "comment": "댓글 남기기|이메일은 공개되지 않습니다.|필수 입력 항목은 * 로 표시되어 있습니다|이름 *|"
        "이메일 *|웹사이트|댓글 등록",
        "account": "로그인|회원가입|비밀번호 찾기|로그인 상태 유지|마이페이지|로그아웃",
        "newsletter": "뉴스레터 구독|이메일 주소를 입력하세요|구독하기|언제든지 구독을 취소할 수 있습니다.",
        "related": "관련 글|추천 글|최근 글|보관함|카테고리|태그|이전 글|다음 글|더 보기",
        "menu": "홈|회사소개|제품|서비스|블로그|공지사항|문의하기|쇼핑몰|장바구니|주문하기|고객지원|이벤트|"
        "갤러리|팀 소개|가격|다운로드|파트너|채용|검색|남성|여성|아동|세일",
        "spam_topics": "항공권 특가|호텔 예약|자동차 보험|무직자 대출|온라인 카지노|명품 레플리카|다이어트 보조제|"
        "비트코인 구매|중고차|신발 할인",
        "spam_mods": "최저가|저렴한|구매|온라인|무료|할인|순위|후기|근처|2024|정품|공식|추천",
        "fragments": "로딩 중...|404 페이지를 찾을 수 없습니다|더 보기|여기를 클릭하세요|자바스크립트를 "
        "활성화하세요.|오류|검색 결과가 없습니다.|준비 중입니다|맨 위로",
    },
}
SITE_WORDS = ("shop", "news", "blog", "deals", "portal", "info", "online", "best", "top", "web", "media", "daily")
TLDS = {"en": "com", "de": "de", "fr": "fr", "es": "es", "it": "it", "pt": "pt", "nl": "nl", "ru": "ru",
        "pl": "pl", "cs": "cz", "ja": "jp", "zh": "cn", "ko": "kr"}  # fmt: skip
DOC_PATHS = ("docs", "help", "manual", "kb", "support/docs")
WEB_PATHS = ("blog", "news", "category", "product", "page", "tag", "article", "p")
_CJK_CHAR = re.compile(r"[\u3040-\u30ff\u3400-\u9fff]")
_WORD = re.compile(r"\w+(?:[-']\w+)*")


def _pool(lang: str, key: str) -> list[str]:
    return PHRASES[lang][key].split("|")


def _junk_url(rng: random.Random, lang: str, n: int) -> str:
    site = f"{rng.choice(SITE_WORDS)}-{rng.choice(SITE_WORDS)}{rng.randrange(100)}.{TLDS[lang]}"
    if rng.random() < 0.25:
        return f"https://{site}/{rng.choice(DOC_PATHS)}/{lang}/page-{n}.html"
    return f"https://www.{site}/{rng.choice(WEB_PATHS)}/{n}-{rng.randrange(10**6)}"


def _block(rng: random.Random, lang: str, key: str, lo: int, hi: int) -> list[str]:
    pool = _pool(lang, key)
    return rng.sample(pool, min(len(pool), rng.randint(lo, hi)))


def _boilerplate(rng: random.Random, lang: str, material: list[str]) -> str:
    blocks = rng.sample(["social", "comment", "account", "newsletter", "related", "footer", "menu"], rng.randint(3, 6))
    lines = []
    for key in blocks:
        lines += _block(rng, lang, key, 3, 8)
        if key == "related":  # post titles: real lines of the site's own (material) pages
            lines += [t[:80] for t in rng.sample(material, min(len(material), rng.randint(2, 5)))]
    year = rng.randint(2005, 2024)
    lines.append(f"© {year} {rng.choice(SITE_WORDS).title()} {rng.choice(_pool(lang, 'footer'))}")
    return "\n".join(lines)


def _cookie_banner(rng: random.Random, lang: str, material: list[str]) -> str:
    sentences = _block(rng, lang, "cookie", 2, 4)
    text = " ".join(sentences) if rng.random() < 0.5 else "\n".join(sentences)
    return text + "\n" + "\n".join(_block(rng, lang, "buttons", 2, 5))


def _menu(rng: random.Random, lang: str, material: list[str]) -> str:
    items = _block(rng, lang, "menu", 8, 20)
    if rng.random() < 0.5:
        items.append(" > ".join(_block(rng, lang, "menu", 3, 4)))  # breadcrumbs
    if rng.random() < 0.5:
        items += _block(rng, lang, "footer", 3, 6)
    sep = rng.choice(["\n", "\n", " | ", " · "])
    return sep.join(items)


def _keyword_spam(rng: random.Random, lang: str, material: list[str]) -> str:
    topics, mods = _pool(lang, "spam_topics"), _pool(lang, "spam_mods")
    main = rng.choice(topics)
    space = "" if lang in CJK_JUNK_LANGS else " "
    phrases = []
    for _ in range(rng.randint(15, 60)):
        topic = main if rng.random() < 0.5 else rng.choice(topics)
        words = rng.sample(mods, rng.randint(1, 2))
        phrases.append(space.join([words[0], topic, *words[1:]]))
    sep = rng.choice([", ", " | ", "\n", " - "])
    return sep.join(phrases)


def _tokens(line: str, lang: str) -> list[str]:
    return list(line) if lang in CJK_JUNK_LANGS else line.split()


def _scrambled(rng: random.Random, lang: str, material: list[str]) -> str:
    start = rng.randrange(max(1, len(material) - 10))
    lines = []
    for line in material[start : start + rng.randint(5, 25)]:
        tokens = _tokens(line, lang)
        rng.shuffle(tokens)
        lines.append(("" if lang in CJK_JUNK_LANGS else " ").join(tokens))
    return "\n".join(lines)


def _word_salad(rng: random.Random, lang: str, material: list[str]) -> str:
    text = "\n".join(material)
    vocab = _CJK_CHAR.findall(text) if lang in CJK_JUNK_LANGS else _WORD.findall(text)
    sentences = []
    for _ in range(rng.randint(4, 20)):
        if lang in CJK_JUNK_LANGS:
            sentences.append("".join(rng.choices(vocab, k=rng.randint(12, 40))) + rng.choice("。。。、！？"))
        else:
            words = rng.choices(vocab, k=rng.randint(6, 20))
            words[0] = words[0][:1].upper() + words[0][1:]
            if len(words) > 8 and rng.random() < 0.5:
                words[rng.randrange(2, len(words) - 2)] += ","
            sentences.append(" ".join(words) + rng.choice([".", ".", ".", "!", "?"]))
    per_paragraph = rng.randint(2, 5)
    paragraphs = [sentences[i : i + per_paragraph] for i in range(0, len(sentences), per_paragraph)]
    return "\n".join(("" if lang in CJK_JUNK_LANGS else " ").join(p) for p in paragraphs)


def _encoding_garbage(rng: random.Random, lang: str, material: list[str]) -> str:
    start = rng.randrange(max(1, len(material) - 10))
    text = "\n".join(material[start : start + rng.randint(5, 25)])
    raw = text.encode("utf-8")
    if rng.random() < 0.5:
        return raw.decode(rng.choice(["cp1252", "latin-1", "cp1251" if lang != "ru" else "cp1252"]), "replace")
    damaged = bytearray(raw)
    for _ in range(len(damaged) // rng.randint(3, 8)):
        damaged[rng.randrange(len(damaged))] = rng.randrange(128, 256)
    return damaged.decode("utf-8", "replace")


def _repeated_lines(rng: random.Random, lang: str, material: list[str]) -> str:
    pool = _pool(lang, "fragments") + _pool(lang, "menu") + rng.sample(material, min(len(material), 3))
    unit = rng.sample(pool, rng.randint(1, 4))
    return "\n".join(unit * rng.randint(8, 30))


def _short_fragment(rng: random.Random, lang: str, material: list[str]) -> str:
    return "\n".join(_block(rng, lang, "fragments", 1, 3))


JUNK_MAKERS: dict[str, Callable[[random.Random, str, list[str]], str]] = {
    "boilerplate": _boilerplate,
    "cookie_banner": _cookie_banner,
    "menu": _menu,
    "keyword_spam": _keyword_spam,
    "scrambled": _scrambled,
    "word_salad": _word_salad,
    "encoding_garbage": _encoding_garbage,
    "repeated_lines": _repeated_lines,
    "short_fragment": _short_fragment,
}


def junk_documents(material: dict[str, list[str]], per_kind: int = 6, seed: int = 0) -> list[Labelled]:
    """``per_kind`` junk records per kind and language; ``material[lang]`` are text lines of real pages."""
    docs, n = [], 0
    for lang in JUNK_LANGS:
        lines = [line for line in material[lang] if len(line.strip()) >= 20]
        for kind in JUNK_KINDS:
            rng = random.Random(f"{seed}/{lang}/{kind}")
            for _ in range(per_kind):
                n += 1
                text = JUNK_MAKERS[kind](rng, lang, lines).strip()
                docs.append(Labelled(Document(_junk_url(rng, lang, n), TEXT, text.encode("utf-8")), "drop", kind, lang))
    return docs
