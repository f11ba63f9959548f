"""The embedded default data set: synthetic Steam-like play data with learnable structure.

Games have 1-3 genres, tags correlated with their genres, a Zipf-like popularity and a small
latent factor vector. Users have Dirichlet tastes over genres and a latent vector of the same
size. A user picks games without replacement with probability proportional to
exp(log popularity + affinity) (Gumbel-top-k), where affinity = taste for the game's genres
+ latent match. Play time grows with affinity; achievements grow with play time.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from training.schema import validate_games, validate_interactions

# Catalog: genres, each with the tags that usually come with it, and genre-independent tags.
GENRE_TAGS: dict[str, tuple[str, ...]] = {
    "rpg": ("fantasy", "story rich", "character customization", "loot", "turn-based", "open world"),
    "roguelike": ("procedural generation", "permadeath", "difficult", "dungeon crawler", "loot"),
    "strategy": ("turn-based", "real-time strategy", "tactical", "grand strategy", "historical"),
    "action": ("fast-paced", "hack and slash", "bullet hell", "violent", "third person"),
    "puzzle": ("relaxing", "logic", "physics", "minimalist", "short"),
    "simulation": ("realistic", "management", "physics", "relaxing", "economy"),
    "sports": ("football", "basketball", "competitive", "realistic", "local multiplayer"),
    "racing": ("cars", "driving", "arcade", "competitive", "split screen"),
    "horror": ("psychological horror", "survival horror", "dark", "gore", "jump scares"),
    "platformer": ("2d", "precision platformer", "metroidvania", "difficult", "cute"),
    "shooter": ("fps", "first-person", "competitive", "team-based", "military", "sci-fi"),
    "adventure": ("story rich", "exploration", "point & click", "mystery", "third person"),
    "survival": ("crafting", "open world", "base building", "exploration", "zombies"),
    "city builder": ("building", "management", "economy", "relaxing", "base building"),
    "card game": ("deckbuilding", "turn-based", "tactical", "competitive", "fantasy"),
    "visual novel": ("anime", "story rich", "romance", "choices matter", "multiple endings"),
    "mmo": ("massively multiplayer", "pvp", "fantasy", "character customization", "grind"),
    "fighting": ("competitive", "local multiplayer", "arcade", "martial arts", "anime"),
    "rhythm": ("music", "great soundtrack", "arcade", "colorful", "difficult"),
    "sandbox": ("open world", "building", "crafting", "physics", "moddable"),
}
GENRES = tuple(GENRE_TAGS)
COMMON_TAGS = (
    "singleplayer",
    "multiplayer",
    "indie",
    "co-op",
    "great soundtrack",
    "pixel graphics",
    "atmospheric",
    "funny",
    "casual",
    "3d",
    "controller support",
    "free to play",
    "early access",
)
TAGS = tuple(dict.fromkeys(COMMON_TAGS + tuple(t for ts in GENRE_TAGS.values() for t in ts)))

GENRE_COUNT_PROBS = (0.45, 0.40, 0.15)  # P(1, 2, 3 genres)
GENRE_PREVALENCE_ALPHA = 2.0  # Dirichlet over genre frequency in the catalog; lower = more skewed
TAGS_PER_GAME = (3, 8)
TAG_WEIGHT_GENRE = 1.0  # sampling weights of a tag for a game ...
TAG_WEIGHT_COMMON = 0.35  # ... when it is a common tag ...
TAG_WEIGHT_OTHER = 0.01  # ... or belongs only to other genres

# Interactions. Tuned so that on held-out games Recall@10 is ~0.12 for popularity and ~0.3 for
# EASE: taste matters clearly, yet the data is far from separable.
ZIPF_EXPONENT = 1.0  # log popularity = -ZIPF_EXPONENT * log(popularity rank)
LATENT_DIM = 8
TASTE_ALPHA = 0.15  # Dirichlet concentration per genre (times the genre's prevalence * n_genres)
TASTE_FLOOR = 0.02  # affinity for genres a user does not care about, relative to 1
TASTE_WEIGHT = 3.0  # weight of log genre taste in the choice score
FACTOR_WEIGHT = 0.8  # weight of the latent match (unit variance) in the choice score
GAMES_PER_USER_MEDIAN = 12
GAMES_PER_USER_SIGMA = 1.0  # of the log-normal
MAX_GAMES_PER_USER = 300
USERS_PER_CHUNK = 1000  # bounds memory: a chunk scores USERS_PER_CHUNK x n_games pairs

# Play time and achievements.
MINUTES_MEDIAN = 240.0
MINUTES_SIGMA = 1.1  # noise of log minutes
MINUTES_AFFINITY = 0.7  # log minutes per standard deviation of affinity
USER_MINUTES_SIGMA = 0.5  # per-user offset of log minutes (some people play more)
ACHIEVEMENT_GAMES_SHARE = 0.7
ACHIEVEMENTS_PER_GAME = (10, 80)
ACHIEVEMENT_MINUTES_SCALE = 1500.0  # minutes to earn ~63% of the reachable achievements
ACHIEVEMENT_REACHABLE = 0.8

# Titles, developers, prices, years.
TITLE_ADJECTIVES = (
    "Crimson",
    "Silent",
    "Iron",
    "Hollow",
    "Neon",
    "Ancient",
    "Forgotten",
    "Eternal",
    "Broken",
    "Golden",
    "Shadow",
    "Frozen",
    "Savage",
    "Hidden",
    "Lost",
    "Burning",
    "Cosmic",
    "Wild",
    "Dark",
    "Bright",
    "Last",
    "Endless",
    "Sacred",
    "Rusty",
    "Little",
    "Mighty",
    "Quiet",
    "Electric",
    "Velvet",
    "Scarlet",
    "Emerald",
    "Obsidian",
)
TITLE_NOUNS = (
    "Dungeon",
    "Empire",
    "Frontier",
    "Kingdom",
    "Harbor",
    "Station",
    "Forest",
    "Citadel",
    "Garden",
    "Horizon",
    "Legion",
    "Machine",
    "Orchard",
    "Planet",
    "Raven",
    "Reactor",
    "River",
    "Signal",
    "Spire",
    "Summit",
    "Temple",
    "Tower",
    "Valley",
    "Voyage",
    "Warden",
    "Wasteland",
    "Circuit",
    "Colony",
    "Drifter",
    "Island",
    "Knight",
    "Outpost",
)
TITLE_SUFFIXES = (
    "",
    "Saga",
    "Chronicles",
    "Tactics",
    "Legends",
    "Online",
    "Simulator",
    "Arena",
    "Odyssey",
    "Rising",
    "Heroes",
    "Quest",
    "Story",
    "Wars",
    "Tycoon",
    "Party",
)
TITLE_SEQUELS = ("II", "III", "2", "Remastered", "Deluxe")
SEQUEL_SHARE = 0.12
DEVELOPER_WORDS = (
    "Blue",
    "Fox",
    "Pixel",
    "Owl",
    "Stone",
    "Cloud",
    "Nine",
    "Red",
    "Lantern",
    "Tiny",
    "Moon",
    "Maple",
    "Copper",
    "Paper",
    "Atlas",
    "Bear",
)
DEVELOPER_SUFFIXES = ("Studios", "Games", "Interactive", "Entertainment", "Works", "Labs")
GAMES_PER_DEVELOPER = 6
PRICES = (0.0, 4.99, 9.99, 14.99, 19.99, 29.99, 39.99, 59.99)
PRICE_PROBS = (0.12, 0.16, 0.22, 0.18, 0.14, 0.09, 0.05, 0.04)
RELEASE_YEARS = (2005, 2024)


def generate(
    n_users: int = 20_000, n_games: int = 5_000, seed: int = 42
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(interactions, games) in the canonical schema; the same seed gives the same data."""
    if n_users < 1 or n_games < 2:
        raise ValueError("need at least 1 user and 2 games")
    rng = np.random.default_rng(seed)
    genre_prevalence = rng.dirichlet(np.full(len(GENRES), GENRE_PREVALENCE_ALPHA))
    genre_mask = _game_genres(rng, n_games, genre_prevalence)
    games = _catalog(rng, genre_mask)
    interactions = _interactions(rng, n_users, genre_mask, genre_prevalence, games)
    source = f"synthetic data (seed {seed})"
    return validate_interactions(interactions, source), validate_games(games, source)


def _gumbel_top_k(
    rng: np.random.Generator, log_weights: np.ndarray, counts: np.ndarray
) -> list[np.ndarray]:
    """Per row i, `counts[i]` distinct columns drawn with probability ~ exp(log_weights)."""
    n_columns, k = log_weights.shape[1], int(counts.max())
    keys = rng.standard_exponential(log_weights.shape, dtype=np.float32)
    np.maximum(keys, np.finfo(np.float32).tiny, out=keys)  # log(0) would always win
    np.log(keys, out=keys)
    np.subtract(log_weights, keys, out=keys)  # log weight + Gumbel noise
    top = np.argpartition(keys, n_columns - k, axis=1)[:, n_columns - k :]
    order = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1)
    top = np.take_along_axis(top, order, axis=1)
    return [top[i, :count] for i, count in enumerate(counts)]


def _game_genres(
    rng: np.random.Generator, n_games: int, genre_prevalence: np.ndarray
) -> np.ndarray:
    """Boolean (n_games, n_genres) matrix; each game has 1-3 genres."""
    counts = rng.choice(np.arange(1, 4), size=n_games, p=GENRE_COUNT_PROBS)
    log_weights = np.broadcast_to(np.log(genre_prevalence), (n_games, len(GENRES)))
    mask = np.zeros((n_games, len(GENRES)), dtype=bool)
    for game, genres in enumerate(_gumbel_top_k(rng, log_weights, counts)):
        mask[game, genres] = True
    return mask


def _game_tags(rng: np.random.Generator, genre_mask: np.ndarray) -> list[list[str]]:
    genre_tag = np.array([[tag in GENRE_TAGS[g] for tag in TAGS] for g in GENRES])
    base = np.where(np.isin(TAGS, COMMON_TAGS), TAG_WEIGHT_COMMON, TAG_WEIGHT_OTHER)
    weights = base + TAG_WEIGHT_GENRE * (genre_mask.astype(float) @ genre_tag)
    low, high = TAGS_PER_GAME
    counts = rng.integers(low, high + 1, size=len(genre_mask))
    return [[TAGS[t] for t in tags] for tags in _gumbel_top_k(rng, np.log(weights), counts)]


def _catalog(rng: np.random.Generator, genre_mask: np.ndarray) -> pd.DataFrame:
    n_games = len(genre_mask)
    genres = [[GENRES[k] for k in np.flatnonzero(row)] for row in genre_mask]
    return pd.DataFrame(
        {
            "game_id": [f"g_{i}" for i in range(n_games)],
            "title": _titles(rng, n_games),
            "genres": genres,
            "tags": _game_tags(rng, genre_mask),
            "developer": _developers(rng, genre_mask),
            "price": rng.choice(PRICES, size=n_games, p=PRICE_PROBS),
            "release_year": _release_years(rng, n_games),
            "has_achievements": rng.random(n_games) < ACHIEVEMENT_GAMES_SHARE,
        }
    )


def _unique_names(rng: np.random.Generator, n: int, *word_lists: tuple[str, ...]) -> list[str]:
    """`n` distinct names from word combinations, numbered once the combinations run out."""
    shape = tuple(len(words) for words in word_lists)
    n_combos = int(np.prod(shape))
    picks = rng.permutation(n_combos)[np.arange(n) % n_combos]
    names = []
    for i, pick in enumerate(picks):
        indices = np.unravel_index(pick, shape)
        words = [ws[j] for ws, j in zip(word_lists, indices, strict=True)]
        if i >= n_combos:
            words.append(str(i // n_combos + 1))
        names.append(" ".join(w for w in words if w))
    return names


def _titles(rng: np.random.Generator, n_games: int) -> list[str]:
    titles = _unique_names(rng, n_games, TITLE_ADJECTIVES, TITLE_NOUNS, TITLE_SUFFIXES)
    sequels = rng.choice(TITLE_SEQUELS, size=n_games)
    is_sequel = rng.random(n_games) < SEQUEL_SHARE
    return [
        f"{title} {sequel}" if is_sequel[i] else title
        for i, (title, sequel) in enumerate(zip(titles, sequels, strict=True))
    ]


def _developers(rng: np.random.Generator, genre_mask: np.ndarray) -> list[str]:
    """Developers specialize: each works in one genre and makes games with it."""
    n_games = len(genre_mask)
    n_devs = max(1, n_games // GAMES_PER_DEVELOPER)
    names = _unique_names(rng, n_devs, DEVELOPER_WORDS, DEVELOPER_WORDS, DEVELOPER_SUFFIXES)
    dev_genre = rng.integers(0, len(GENRES), size=n_devs)
    developers = []
    for row in genre_mask:
        candidates = np.flatnonzero(row[dev_genre])
        pool = candidates if len(candidates) else np.arange(n_devs)
        developers.append(names[rng.choice(pool)])
    return developers


def _release_years(rng: np.random.Generator, n_games: int) -> np.ndarray:
    first, last = RELEASE_YEARS
    years = np.arange(first, last + 1)
    weights = np.exp(0.15 * (years - first))  # the catalog grows every year
    return rng.choice(years, size=n_games, p=weights / weights.sum()).astype(np.int64)


def _interactions(
    rng: np.random.Generator,
    n_users: int,
    genre_mask: np.ndarray,
    genre_prevalence: np.ndarray,
    games: pd.DataFrame,
) -> pd.DataFrame:
    n_games = len(genre_mask)
    genre_share = (genre_mask / genre_mask.sum(axis=1, keepdims=True)).astype(np.float32)
    log_pop = (-ZIPF_EXPONENT * np.log1p(rng.permutation(n_games))).astype(np.float32)
    game_factors = rng.standard_normal((n_games, LATENT_DIM), dtype=np.float32)
    tastes = rng.dirichlet(TASTE_ALPHA * len(GENRES) * genre_prevalence, size=n_users)
    user_factors = rng.standard_normal((n_users, LATENT_DIM), dtype=np.float32)
    # Scaled so that the latent match has unit variance times FACTOR_WEIGHT.
    user_factors *= FACTOR_WEIGHT / np.sqrt(LATENT_DIM)
    max_games = min(MAX_GAMES_PER_USER, max(1, n_games // 2))
    counts = np.clip(
        np.round(rng.lognormal(np.log(GAMES_PER_USER_MEDIAN), GAMES_PER_USER_SIGMA, n_users)),
        1,
        max_games,
    ).astype(np.int64)

    users, chosen, affinity = [], [], []
    for start in range(0, n_users, USERS_PER_CHUNK):
        rows = slice(start, start + USERS_PER_CHUNK)
        scores = tastes[rows].astype(np.float32) @ genre_share.T
        scores += TASTE_FLOOR
        np.log(scores, out=scores)
        scores *= TASTE_WEIGHT
        scores += user_factors[rows] @ game_factors.T
        picks = _gumbel_top_k(rng, scores + log_pop, counts[rows])
        for offset, games_of_user in enumerate(picks):
            users.append(np.full(len(games_of_user), start + offset))
            chosen.append(games_of_user)
            affinity.append(scores[offset, games_of_user])
    user_idx, game_idx = np.concatenate(users), np.concatenate(chosen)
    minutes = _minutes(rng, np.concatenate(affinity).astype(np.float64), user_idx, n_users)
    user_ids = np.array([f"u_{i}" for i in range(n_users)], dtype=object)
    return pd.DataFrame(
        {
            "user_id": user_ids[user_idx],
            "game_id": games["game_id"].to_numpy()[game_idx],
            "minutes_played": minutes,
            "achievements": _achievements(
                rng, minutes, game_idx, games["has_achievements"].to_numpy()
            ),
        }
    )


def _minutes(
    rng: np.random.Generator, affinity: np.ndarray, user_idx: np.ndarray, n_users: int
) -> np.ndarray:
    """Log-normal play time, longer for games that fit the user's taste; whole minutes >= 1."""
    z = (affinity - affinity.mean()) / max(affinity.std(), 1e-9)
    user_offset = rng.normal(0.0, USER_MINUTES_SIGMA, n_users)[user_idx]
    log_minutes = (
        np.log(MINUTES_MEDIAN)
        + MINUTES_AFFINITY * z
        + user_offset
        + rng.normal(0.0, MINUTES_SIGMA, len(affinity))
    )
    return np.maximum(1.0, np.round(np.exp(log_minutes)))


def _achievements(
    rng: np.random.Generator,
    minutes: np.ndarray,
    game_idx: np.ndarray,
    has_achievements: np.ndarray,
) -> np.ndarray:
    """Earned achievements grow with play time; 0 for games that have none."""
    low, high = ACHIEVEMENTS_PER_GAME
    per_game = rng.integers(low, high + 1, size=len(has_achievements)) * has_achievements
    share = ACHIEVEMENT_REACHABLE * (1.0 - np.exp(-minutes / ACHIEVEMENT_MINUTES_SCALE))
    return rng.binomial(per_game[game_idx], share).astype(np.int64)
