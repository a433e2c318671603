"""One request to the Hugging Face hub before anything loads, so a wrong id, a gated repository or a dead network
fails at once in one line (the hub's downloads retry a dead network for close to a minute per file)."""
from huggingface_hub import HfApi
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError


def check_reachable(repo: str, kind: str, label: str, instead: str) -> None:
    """Raise ValueError naming `label` (e.g. "model qwen-1.5b (Qwen/…)") when the hub says `repo` (a "model" or a
    "dataset") is gated, missing or out of reach; `instead` says what to use offline."""
    client_error = HfHubHTTPError.__bases__[0]  # the hub's HTTP client's base error: no network, timeouts
    api = HfApi()
    try:
        (api.model_info if kind == "model" else api.dataset_info)(repo, timeout=10)
    except GatedRepoError:
        page = repo if kind == "model" else f"datasets/{repo}"
        raise ValueError(f"{label} is gated on the Hugging Face hub: accept its terms on huggingface.co/{page} and "
                         "log in (hf auth login)") from None
    except RepositoryNotFoundError:
        raise ValueError(f"{label} was not found on the Hugging Face hub (or it is private: hf auth login); check "
                         f"the id, or use {instead}") from None
    except (client_error, OSError) as e:
        detail = str(e).splitlines()[0][:100] if str(e) else "no detail"
        raise ValueError(f"{label} cannot be checked: the Hugging Face hub cannot be reached for {kind} {repo} "
                         f"({type(e).__name__}: {detail}); check "
                         f"the network, or set HF_HUB_OFFLINE=1 and use {instead}") from None
