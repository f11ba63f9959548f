"""The embedded default data set: synthetic Steam-like play data with learnable structure.

Games have 1-3 genres, tags correlated with their genres, a Zipf-like popularity and a small
latent factor vector. Users have Dirichlet tastes over genres and a latent vector of the same
size. A user picks games without replacement with probability proportional to
exp(log popularity + affinity) (Gumbel-top-k, or for large catalogs an exact sampler of the
same distribution: `_PlayModel`), where affinity = taste for the game's genres + latent match.
Play time grows with affinity; achievements grow with play time.

The interactions come in pieces of `USERS_PER_CHUNK` players (`synthesize`), each from a seed
of its own, so a data set of any size is written piece by piece (`gamerec data synth`, through
`training.data.io.write_dataset_pieces`) without being held in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

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
USERS_PER_CHUNK = 1000  # players a piece of the interactions (bounds the generator's memory)
KEYED_MAX_GAMES = 5_000  # up to here players draw by Gumbel keys, above by rejection (faster)

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
    games, pieces = synthesize(n_users, n_games, seed)
    interactions = pd.concat(list(pieces), ignore_index=True)
    source = f"synthetic data (seed {seed})"
    return validate_interactions(interactions, source), validate_games(games, source)


def synthesize(
    n_users: int, n_games: int, seed: int
) -> tuple[pd.DataFrame, Iterator[pd.DataFrame]]:
    """The catalog, and the interactions as pieces of `USERS_PER_CHUNK` players each, sorted by
    player, made one at a time: memory is bounded by a piece, whatever the number of players.
    Piece i depends on the seed, the catalog and i only (with the first piece's affinity
    scale), so the pieces concatenated are the same data however they are grouped."""
    if n_users < 1 or n_games < 2:
        raise ValueError("need at least 1 user and 2 games")
    rng = np.random.default_rng(seed)
    genre_prevalence = rng.dirichlet(np.full(len(GENRES), GENRE_PREVALENCE_ALPHA))
    genre_mask = _game_genres(rng, n_games, genre_prevalence)
    games = _catalog(rng, genre_mask)
    model = _PlayModel.build(rng, genre_mask, genre_prevalence, games["has_achievements"])
    return games, model.pieces(n_users, seed)


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


@dataclass(frozen=True)
class _PlayModel:
    """The catalog as players choose from it.

    A player picks games without replacement with probability ~ popularity * exp(affinity),
    affinity = taste (which sees a game only through its genre combination) + latent match.
    Up to `KEYED_MAX_GAMES` games, Gumbel-top-k does it with a random key per (player, game).
    Above, that is too slow (7 s per 1,000 players at 100,000 games), and the same distribution
    comes from draws with replacement, skipping repeats (the Plackett-Luce order that
    Gumbel-top-k gives), each draw by rejection: a genre combination c by its popularity *
    exp(taste + best match in c), one of its games by popularity, kept with probability
    exp(match - best match in c).
    """

    game_ids: np.ndarray  # str, per catalog position
    combo_of_game: np.ndarray  # int64: each game's genre combination
    combo_share: np.ndarray  # float64 (n_combos, n_genres): a combination's genres, sum 1
    combo_mass: np.ndarray  # float64: popularity summed over a combination's games
    by_combo: np.ndarray  # int64 game positions, grouped by combination
    combo_start: np.ndarray  # int64 (n_combos + 1,): where each group begins in `by_combo`
    cum_popularity: np.ndarray  # float64 (n_games + 1,): popularity summed along `by_combo`
    log_popularity: np.ndarray  # float64 per game
    game_factors: np.ndarray  # float64 (n_games, LATENT_DIM)
    grouped_factors: np.ndarray  # float32 (LATENT_DIM, n_games): their columns along `by_combo`
    taste_alpha: np.ndarray  # Dirichlet concentration of a player's genre taste
    achievements_per_game: np.ndarray  # int64, 0 for games without achievements
    max_games: int

    @classmethod
    def build(
        cls,
        rng: np.random.Generator,
        genre_mask: np.ndarray,
        genre_prevalence: np.ndarray,
        has_achievements: pd.Series,
    ) -> _PlayModel:
        n_games = len(genre_mask)
        popularity = 1.0 / (1.0 + rng.permutation(n_games)) ** ZIPF_EXPONENT
        game_factors = rng.standard_normal((n_games, LATENT_DIM))
        low, high = ACHIEVEMENTS_PER_GAME
        per_game = rng.integers(low, high + 1, size=n_games) * has_achievements.to_numpy()
        combos, combo_of_game = np.unique(genre_mask, axis=0, return_inverse=True)
        combo_of_game = combo_of_game.ravel().astype(np.int64)
        by_combo = np.argsort(combo_of_game, kind="stable")
        return cls(
            game_ids=np.array([f"g_{i}" for i in range(n_games)]),
            combo_of_game=combo_of_game,
            combo_share=combos / combos.sum(axis=1, keepdims=True),
            combo_mass=np.bincount(combo_of_game, popularity),
            by_combo=by_combo,
            combo_start=np.concatenate([[0], np.cumsum(np.bincount(combo_of_game))]),
            cum_popularity=np.concatenate([[0.0], np.cumsum(popularity[by_combo])]),
            log_popularity=np.log(popularity),
            game_factors=game_factors,
            grouped_factors=np.ascontiguousarray(game_factors[by_combo].T, dtype=np.float32),
            taste_alpha=TASTE_ALPHA * len(GENRES) * genre_prevalence,
            achievements_per_game=per_game.astype(np.int64),
            max_games=min(MAX_GAMES_PER_USER, max(1, n_games // 2)),
        )

    def pieces(self, n_users: int, seed: int) -> Iterator[pd.DataFrame]:
        """The interactions, `USERS_PER_CHUNK` players at a time, each from its own seed."""
        scale: tuple[float, float] | None = None
        for chunk, first in enumerate(range(0, n_users, USERS_PER_CHUNK)):
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(chunk,)))
            users, games, affinity = self._choices(rng, min(USERS_PER_CHUNK, n_users - first))
            if scale is None:  # the first piece measures the affinity's scale for all
                scale = float(affinity.mean()), max(float(affinity.std()), 1e-9)
            yield self._plays(rng, first, users, games, (affinity - scale[0]) / scale[1])

    def _choices(
        self, rng: np.random.Generator, n_users: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(player, game, affinity) of every play of `n_users` new players, sorted."""
        tastes = rng.dirichlet(self.taste_alpha, size=n_users)
        # Scaled so that the latent match has unit variance times FACTOR_WEIGHT.
        factors = rng.standard_normal((n_users, LATENT_DIM)) * (FACTOR_WEIGHT / np.sqrt(LATENT_DIM))
        counts = np.clip(
            np.round(rng.lognormal(np.log(GAMES_PER_USER_MEDIAN), GAMES_PER_USER_SIGMA, n_users)),
            1,
            self.max_games,
        ).astype(np.int64)
        taste = TASTE_WEIGHT * np.log(tastes @ self.combo_share.T + TASTE_FLOOR)
        users, games = self._draw(rng, taste, factors, counts)
        affinity = taste[users, self.combo_of_game[games]] + np.einsum(
            "ij,ij->i", factors[users], self.game_factors[games]
        )
        return users, games, affinity

    def _draw(
        self, rng: np.random.Generator, taste: np.ndarray, factors: np.ndarray, counts: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(player, game) pairs sorted: `counts[i]` distinct games for player i, drawn with
        probability ~ popularity * exp(taste[i, combination] + factors[i] . game factors)."""
        if len(self.game_ids) > KEYED_MAX_GAMES:
            users, games = self._draw_by_rejection(rng, taste, factors, counts)
        else:
            scores = taste[:, self.combo_of_game] + factors @ self.game_factors.T
            picks = _gumbel_top_k(rng, scores + self.log_popularity, counts)
            users, games = np.repeat(np.arange(len(counts)), counts), np.concatenate(picks)
        order = np.lexsort((games, users))
        return users[order], games[order]

    def _draw_by_rejection(
        self, rng: np.random.Generator, taste: np.ndarray, factors: np.ndarray, counts: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """`_draw` without a key per catalog game: see the class doc."""
        best = self._best_matches(factors)
        weights = taste + best
        combo_cdf = np.cumsum(
            self.combo_mass * np.exp(weights - weights.max(axis=1, keepdims=True)), axis=1
        )
        combo_cdf /= combo_cdf[:, -1:]
        users, games = np.zeros(0, np.int64), np.zeros(0, np.int64)
        missing, draws_per_game = counts, 2.0
        while missing.any():
            todo = np.flatnonzero(missing)
            draws = np.ceil(draws_per_game * missing[todo]).astype(np.int64)
            rows = np.repeat(np.arange(len(todo)), draws)
            g, combo = self._propose(rng, rows, combo_cdf[todo])
            u = todo[rows]
            match = np.einsum("ij,ij->i", factors[u], self.game_factors[g])
            kept = rng.random(len(u)) < np.exp(match - best[u, combo])
            users, games = _first_distinct(
                np.concatenate([users, u[kept]]), np.concatenate([games, g[kept]]), counts
            )
            missing = counts - np.bincount(users, minlength=len(counts))
            # Players still short met repeats or bad luck: at least twice the draws next round.
            draws_per_game = 2 * max(draws_per_game, 1.0 / max(kept.mean(), 0.01))
        return users, games

    def _best_matches(self, factors: np.ndarray, rows: int = 128) -> np.ndarray:
        """(players, combinations): each player's best latent match among a combination's
        games, a little over (float32 products), as the rejection needs."""
        best = np.empty((len(factors), len(self.combo_mass)))
        for start in range(0, len(factors), rows):  # bounds the (rows, n_games) products
            match = factors[start : start + rows].astype(np.float32) @ self.grouped_factors
            best[start : start + rows] = np.maximum.reduceat(match, self.combo_start[:-1], axis=1)
        return best + 1e-3

    def _propose(
        self, rng: np.random.Generator, rows: np.ndarray, combo_cdf: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(game, combination) per entry of `rows`: a combination from that row of `combo_cdf`,
        then one of its games by popularity."""
        n_combos = combo_cdf.shape[1]
        # One search over all rows: row r's cumulative weights, shifted by r.
        shifted = (combo_cdf + np.arange(len(combo_cdf))[:, None]).ravel()
        found = np.searchsorted(shifted, rows + rng.random(len(rows)), side="right")
        combo = np.clip(found - rows * n_combos, 0, n_combos - 1)
        start, stop = self.combo_start[combo], self.combo_start[combo + 1]
        low, high = self.cum_popularity[start], self.cum_popularity[stop]
        drawn = low + rng.random(len(rows)) * (high - low)
        at = np.searchsorted(self.cum_popularity, drawn, side="right") - 1
        return self.by_combo[np.clip(at, start, stop - 1)], combo

    def _plays(
        self,
        rng: np.random.Generator,
        first_user: int,
        users: np.ndarray,
        games: np.ndarray,
        affinity_z: np.ndarray,
    ) -> pd.DataFrame:
        """The plays' rows: play time grows with affinity, achievements with play time."""
        n_users = int(users.max(initial=-1)) + 1
        user_offset = rng.normal(0.0, USER_MINUTES_SIGMA, n_users)[users]
        log_minutes = (
            np.log(MINUTES_MEDIAN)
            + MINUTES_AFFINITY * affinity_z
            + user_offset
            + rng.normal(0.0, MINUTES_SIGMA, len(users))
        )
        minutes = np.maximum(1.0, np.round(np.exp(log_minutes)))
        share = ACHIEVEMENT_REACHABLE * (1.0 - np.exp(-minutes / ACHIEVEMENT_MINUTES_SCALE))
        achievements = rng.binomial(self.achievements_per_game[games], share).astype(np.int64)
        user_ids = np.array([f"u_{first_user + i}" for i in range(n_users)])
        return pd.DataFrame(
            {
                "user_id": user_ids[users],
                "game_id": self.game_ids[games],
                "minutes_played": minutes,
                "achievements": achievements,
            }
        )


def _first_distinct(
    users: np.ndarray, games: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per player, in draw order, the first `counts[player]` distinct games of the draws."""
    order = np.argsort(users, kind="stable")  # grouped by player, draw order kept
    users, games = users[order], games[order]
    _, first = np.unique(users * (games.max(initial=0) + 1) + games, return_index=True)
    first.sort()
    users, games = users[first], games[first]
    per_user = np.bincount(users, minlength=len(counts))
    rank = np.arange(len(users)) - np.repeat(np.cumsum(per_user) - per_user, per_user)
    kept = rank < counts[users]
    return users[kept], games[kept]
