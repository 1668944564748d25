"""Multi-step API (MSA) definitions with Uptrends' field names: steps, variables, assertions.

Steps come either as `MsaSteps` (+ `PredefinedVariables`) on the monitor, or inside the
`MultiStepApiTransactionScript` JSON string (`{"MsaSteps": [...], "PredefinedVariables": [...],
"Version": 2}`). Script-only step fields that Picket does not use (Encoding, discriminator, ...)
are accepted and ignored so an exported script imports as it is.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from shared import jsonin, regex, secrets

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.\-]+)\s*\}\}")

SourceName = Literal[
    "None",
    "Constant",
    "Variable",
    "ResponseStatusCode",
    "ResponseStatusDescription",
    "ResponseBodyJson",
    "ResponseCompleted",
    "ResponseBodyText",
    "Fail",
    "ContentLengthCalculated",
    "Duration",
    "Sum",
    "Concatenation",
    "ToBase64",
    "ToSHA1Hex",
    "ToMD5Hex",
    "ResponseBodyXml",
    "ResponseHeader",
    "Cookie",
    "VariablesResolved",
    "CumulativeDuration",
    "ResponseHasException",
    "ExecuteFunction",
]
ComparisonName = Literal[
    "Equal",
    "DoesNotEqual",
    "ContainsText",
    "DoesNotContainText",
    "ShouldBeIgnored",
    "LessThan",
    "GreaterThan",
    "LessThanOrEqual",
    "GreaterThanOrEqual",
    "IsNotEmpty",
    "IsEmpty",
    "IsNotNull",
    "IsNull",
    "DoesNotExist",
    "Exists",
]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ApiVariableDefinition(_Lenient):
    Source: SourceName
    Property: str = ""
    Name: str = ""
    Arguments: list[ApiVariableDefinition] = Field(default_factory=list)


class ApiAssertion(_Lenient):
    Source: SourceName
    Property: str = ""
    Comparison: ComparisonName
    TargetValue: str = ""


class ApiAuthenticationInfo(_Lenient):
    Id: str | None = None
    AuthenticationType: Literal["None", "Basic", "NTLM", "Digest"] = "None"
    UserName: str = ""
    Password: str = ""  # write-only (shared.secrets)
    PasswordSpecified: bool = False

    @field_validator("Password")
    @classmethod
    def _password_not_mask(cls, password: str) -> str:
        return secrets.not_mask(password)


class SecretFlagWhenSet(BaseModel):
    """A request header whose Picket field `IsSecret` (write-only like the credential headers,
    shared.secrets) is shown only when set: Uptrends' own shape otherwise. A credential's
    value may not be `******` (what a kept secret is sent as; kept only where it went)."""

    @model_validator(mode="after")
    def _value_not_mask(self) -> Any:
        name = str(getattr(self, "Name", None) or getattr(self, "Key", ""))
        if secrets.is_secret_header(name, getattr(self, "IsSecret", False)):
            secrets.not_mask(getattr(self, "Value", ""))
        return self

    @model_serializer(mode="wrap")
    def _flag_only_when_set(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        shown: dict[str, Any] = handler(self)
        if not getattr(self, "IsSecret", False):
            shown.pop("IsSecret", None)
        return shown


class HeaderValue(_Lenient, SecretFlagWhenSet):
    Key: Annotated[str, Field(min_length=1)]
    Value: str = ""
    IsSecret: bool = False  # Picket (SecretFlagWhenSet)


class MsaStep(_Lenient):
    StepType: Literal["HttpRequest", "Delay"] = "HttpRequest"
    Name: str = ""
    Url: str = Field(default="", validate_default=True)
    Method: str = "GET"
    Body: str = ""
    RequestHeaders: list[HeaderValue] = Field(default_factory=list)
    Variables: list[ApiVariableDefinition] = Field(default_factory=list)
    Assertions: list[ApiAssertion] = Field(default_factory=list)
    Authentication: ApiAuthenticationInfo | None = None
    IgnoreCertificateErrors: bool = False
    Delay: Annotated[int, Field(ge=0, le=120_000)] = 0  # milliseconds
    RetryUntilSuccessful: bool = False
    MaxAttempts: Annotated[int, Field(ge=1, le=10)] = 1
    RetryWaitMilliseconds: Annotated[int, Field(ge=0, le=60_000)] = 0

    @field_validator("Method")
    @classmethod
    def _method(cls, method: str) -> str:
        upper = method.upper()
        if upper not in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"):
            raise ValueError("must be GET, POST, PUT, PATCH, DELETE, HEAD or OPTIONS")
        return upper

    @field_validator("Url")
    @classmethod
    def _url(cls, url: str, info: ValidationInfo) -> str:
        if info.data.get("StepType", "HttpRequest") == "HttpRequest" and not url:
            raise ValueError("is required for an HttpRequest step")
        if url and not re.match(r"(?i)(https?://|\{\{)", url):
            raise ValueError("must start with http://, https:// or a {{variable}}")
        return secrets.not_masked_url(url)


class PredefinedVariable(_Lenient):
    Key: Annotated[str, Field(min_length=1)]
    Value: str = ""


FunctionType = Literal["Mapping", "Regex", "JwtEncode", "JwtDecode", "Hash"]


class UserDefinedFunction(_Lenient):
    """A function variables can call (Source ExecuteFunction, Property = the function's name,
    Arguments = its input). The script form's `Mapping` object and `discriminator`
    (`UserDefinedFunctionMapping`, ...) are understood too."""

    Name: Annotated[str, Field(min_length=1)]
    Type: FunctionType | None = None
    discriminator: str = ""
    Mappings: list[PredefinedVariable] = Field(default_factory=list)
    Mapping: dict[str, str] = Field(default_factory=dict)
    Regex: str = ""
    JwtSigningKey: str = ""
    JwtAlgorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    # Picket's names for the Hash function's settings (not in the Uptrends notes)
    HashAlgorithm: Literal[
        "MD5", "SHA1", "SHA256", "SHA512", "HMACSHA1", "HMACSHA256", "HMACSHA512"
    ] = "SHA256"
    HashKey: str = ""

    @model_validator(mode="after")
    def _kind(self, info: ValidationInfo) -> UserDefinedFunction:
        if self.Type is None:
            inferred = self.discriminator.removeprefix("UserDefinedFunction")
            if inferred not in ("Mapping", "Regex", "JwtEncode", "JwtDecode", "Hash"):
                raise ValueError(f"function {self.Name!r} needs a Type")
            self.Type = inferred  # type: ignore[assignment]
        if self.Type == "Regex":
            try:
                regex.validate(self.Regex, info.context)
            except regex.RegexError as exc:
                raise ValueError(
                    f'function {self.Name!r}: Regex "{self.Regex}" is invalid: {exc}'
                ) from None
        return self

    def table(self) -> dict[str, str]:
        return {**{m.Key: m.Value for m in self.Mappings}, **self.Mapping}


class MsaScript(_Lenient):
    MsaSteps: list[MsaStep] = Field(default_factory=list)
    PredefinedVariables: list[PredefinedVariable] = Field(default_factory=list)
    UserDefinedFunctions: list[UserDefinedFunction] = Field(default_factory=list)
    Version: int = 2


def parse_script(text: str, context: Any = None) -> MsaScript:
    """The MultiStepApiTransactionScript string; ValueError naming what is wrong. `context`:
    pydantic's validation context (shared.regex.FROM_OUTSIDE for input from the API)."""
    raw = jsonin.loads(text)  # ValueError: not JSON, or nested too deeply
    found = jsonin.unstorable(raw)
    if found is not None:
        raise ValueError(f"{found[0]}: {found[1]}")
    try:
        return MsaScript.model_validate(raw, context=context)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in first["loc"])
        where = where.replace(".[", "[")
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ValueError(f"{where}: {message}") from None
