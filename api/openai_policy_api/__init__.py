"""The OpenAIPolicy model: one pydantic description of the resource, from which the CRD is generated.

    from openai_policy_api import OpenAIPolicy, PolicySpec, load_policy, PolicyError
"""

from .document import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    OpenAIPolicy,
    PolicyMetadata,
    dumps_document,
    load_policy,
    load_policy_file,
    load_spec,
    spec_document,
)
from .matching import is_wildcard, model_allowed
from .problems import PolicyError, Problem
from .selector import LabelSelector, LabelSelectorRequirement
from .spec import (
    DEFAULT_BASE_URL,
    PII_TYPES,
    WINDOWS,
    ApiKeySpec,
    BudgetLimit,
    BudgetSpec,
    CacheSpec,
    CircuitBreakerSpec,
    LoggingSpec,
    ModelsSpec,
    ModerationSpec,
    PerUserRateLimitSpec,
    PiiSpec,
    PolicySpec,
    PriceOverride,
    PricingSpec,
    PromptInjectionSpec,
    QueueSpec,
    RateLimitSpec,
    RequestsSpec,
    RetriesSpec,
    SafetySpec,
    SecretKeyRef,
    UpstreamSpec,
)
from .status import (
    CONDITION_TYPES,
    Condition,
    GenerationCount,
    PodsStatus,
    PolicyStatus,
    StatusSummary,
    UsageStatus,
    WindowSpend,
    pods_summary,
    spend_summary,
    summarize,
)

__all__ = [
    "API_VERSION", "CONDITION_TYPES", "DEFAULT_BASE_URL", "GROUP", "KIND", "PII_TYPES", "PLURAL",
    "SHORT_NAMES", "SINGULAR", "VERSION", "WINDOWS",
    "ApiKeySpec", "BudgetLimit", "BudgetSpec", "CacheSpec", "CircuitBreakerSpec", "Condition",
    "GenerationCount", "LabelSelector", "LabelSelectorRequirement", "LoggingSpec", "ModelsSpec",
    "ModerationSpec", "OpenAIPolicy", "PerUserRateLimitSpec", "PiiSpec", "PodsStatus", "PolicyError",
    "PolicyMetadata", "PolicySpec", "PolicyStatus", "PriceOverride", "PricingSpec", "Problem",
    "PromptInjectionSpec", "QueueSpec", "RateLimitSpec", "RequestsSpec", "RetriesSpec", "SafetySpec",
    "SecretKeyRef", "StatusSummary", "UpstreamSpec", "UsageStatus", "WindowSpend",
    "dumps_document", "is_wildcard", "load_policy", "load_policy_file", "load_spec", "model_allowed",
    "pods_summary", "spec_document", "spend_summary", "summarize",
]
