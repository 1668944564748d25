"""Monitor definitions with Uptrends v4 field names, one pydantic model per monitor type.

A new monitor type is one model class plus one `register()` call; the API validates every
definition against its type's model, and the agent receives the validated definition.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shared import regex, secrets
from shared.maintenance import MAX_PERIODS, MaintenancePeriod
from shared.msa import (
    MsaScript,
    MsaStep,
    PredefinedVariable,
    SecretFlagWhenSet,
    UserDefinedFunction,
    parse_script,
)
from shared.registry import Registry
from shared.settings import split_host_port

READ_ONLY_FIELDS = frozenset({"MonitorGuid", "Hash", "CreatedDate", "LastModifiedDate"})
# kept in the definition, so each agent gets them with its assignment (shared/maintenance.py);
# managed at /Monitor/{guid}/MaintenancePeriod, neither shown nor accepted as a monitor field
PERIODS = "MaintenancePeriods"
DEFAULT_CHECK_INTERVAL_MINUTES = 5


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class RequestHeader(_Strict, SecretFlagWhenSet):
    Name: Annotated[str, Field(min_length=1, max_length=256)]
    Value: str = ""
    IsSecret: bool = False  # Picket (SecretFlagWhenSet)

    @field_validator("Name")
    @classmethod
    def _token(cls, name: str) -> str:
        if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
            raise ValueError("must be an HTTP header name (letters, digits and !#$%&'*+.^_`|~-)")
        return name

    @field_validator("Value")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if "\r" in value or "\n" in value:
            raise ValueError("must not contain line breaks")
        return value


class CustomField(_Strict):
    Name: str
    Value: str = ""


class CheckpointSelection(_Strict):
    Checkpoints: list[int] = Field(default_factory=list)
    Regions: list[int] = Field(default_factory=list)
    ExcludeLocations: list[int] = Field(default_factory=list)


ConditionTypeName = Literal[
    "HttpStatus",
    "ContentMatch",
    "LoadTimeLimit1",
    "LoadTimeLimit2",
    "TotalMinBytes",
    "TotalMaxBytes",
    "TimeToFirstByteMaximum",
]
# conditions whose Value is a whole number: milliseconds or bytes
NUMERIC_CONDITIONS = frozenset(
    {"LoadTimeLimit1", "LoadTimeLimit2", "TotalMinBytes", "TotalMaxBytes", "TimeToFirstByteMaximum"}
)
MatchTypeName = Literal[
    "ErrorWhenContains",
    "ErrorWhenNotContains",
    "ErrorWhenContainsRegex",
    "ErrorWhenNotContainsRegex",
]


class ErrorCondition(_Strict):
    ErrorConditionType: ConditionTypeName
    Value: str = ""
    Percentage: str | None = None
    Level: Literal["Info", "Warning", "Error"] | None = None
    MatchType: MatchTypeName | None = None
    Effect: Literal["Indicate", "Error"] | None = None

    @field_validator("Percentage")
    @classmethod
    def _no_percentage(cls, value: str | None) -> str | None:
        if value not in (None, ""):
            raise ValueError(
                "is not supported: it belongs to Uptrends' PageElement…WithPercentage "
                "conditions (browser checks), which Picket does not have; leave it out"
            )
        return None

    @field_validator("Level")
    @classmethod
    def _no_level(cls, value: str | None) -> str | None:
        if value is not None:
            raise ValueError(
                "is not supported: it belongs to Uptrends' ConsoleContentMatch and "
                "ConsoleLevel conditions (browser console), which Picket does not have; leave "
                "it out (Effect says whether a condition fails the check or only indicates)"
            )
        return None

    @model_validator(mode="after")
    def _check_value(self, info: ValidationInfo) -> ErrorCondition:
        if self.ErrorConditionType == "HttpStatus":
            if not re.fullmatch(r"[1-5][0-9][0-9]", self.Value.strip()):
                raise ValueError("HttpStatus needs Value: an HTTP status code such as 200")
        elif self.ErrorConditionType == "ContentMatch":
            if not self.Value:
                raise ValueError("ContentMatch needs Value: the text or pattern to match")
            if (self.MatchType or "").endswith("Regex"):
                try:
                    regex.validate(self.Value, info.context)
                except regex.RegexError as exc:
                    raise ValueError(
                        f'Value "{self.Value}" is not a valid regular expression: {exc}'
                    ) from None
        elif not self.Value.strip().isdigit():
            unit = "bytes" if "Bytes" in self.ErrorConditionType else "milliseconds"
            raise ValueError(f"{self.ErrorConditionType} needs Value: a whole number of {unit}")
        return self

    @property
    def number(self) -> int:
        return int(self.Value.strip())


class MonitorBase(_Strict):
    """Fields every monitor type has."""

    type_names: ClassVar[tuple[str, ...]] = ()

    MonitorGuid: str | None = None
    Name: Annotated[str, Field(min_length=1, max_length=200)]
    MonitorType: str
    IsActive: bool = True
    GenerateAlert: bool = True
    MonitorMode: Literal["Development", "Staging", "Production"] = "Production"
    CheckInterval: Annotated[int, Field(ge=1, le=240)] | None = None
    CheckIntervalSeconds: Annotated[int, Field(ge=1, le=14_400)] | None = None
    TimeoutSeconds: Annotated[int, Field(ge=1, le=120)] = 30
    SelectedCheckpoints: CheckpointSelection = Field(default_factory=CheckpointSelection)
    # only the selected checkpoints marked primary (controller/rotation.py)
    UsePrimaryCheckpointsOnly: bool = False
    # every selected checkpoint runs every slot; the thresholds (percent of the selected
    # checkpoints whose partial check failed) decide the concurrent check's ErrorLevel
    UseConcurrentMonitoring: bool = False
    ConcurrentUnconfirmedErrorThreshold: Annotated[int, Field(ge=1, le=100)] = 50
    ConcurrentConfirmedErrorThreshold: Annotated[int, Field(ge=1, le=100)] = 75
    Notes: str = ""
    CustomFields: list[CustomField] = Field(default_factory=list)
    Hash: str | None = None
    CreatedDate: str | None = None
    LastModifiedDate: str | None = None
    MaintenancePeriods: Annotated[list[MaintenancePeriod], Field(max_length=MAX_PERIODS)] = Field(
        default_factory=list
    )

    @field_validator("Name")
    @classmethod
    def _name_not_blank(cls, name: str) -> str:
        if not name.strip():
            raise ValueError("must not be blank")
        return name

    @field_validator("CheckIntervalSeconds")
    @classmethod
    def _one_interval(cls, seconds: int | None, info: ValidationInfo) -> int | None:
        if seconds is not None and info.data.get("CheckInterval") is not None:
            raise ValueError("give CheckInterval (minutes) or CheckIntervalSeconds, not both")
        return seconds

    @field_validator("ConcurrentConfirmedErrorThreshold")
    @classmethod
    def _thresholds_in_order(cls, confirmed: int, info: ValidationInfo) -> int:
        unconfirmed = info.data.get("ConcurrentUnconfirmedErrorThreshold")
        if unconfirmed is not None and confirmed < unconfirmed:
            raise ValueError("must not be below ConcurrentUnconfirmedErrorThreshold")
        return confirmed

    @model_validator(mode="after")
    def _default_interval(self) -> MonitorBase:
        if self.CheckInterval is None and self.CheckIntervalSeconds is None:
            self.CheckInterval = DEFAULT_CHECK_INTERVAL_MINUTES
        return self

    @property
    def interval_seconds(self) -> int:
        if self.CheckIntervalSeconds is not None:
            return self.CheckIntervalSeconds
        return (self.CheckInterval or DEFAULT_CHECK_INTERVAL_MINUTES) * 60

    def definition(self) -> dict[str, Any]:
        """What is stored and sent to agents: every field but the server-set ones (and no
        maintenance periods when there are none: a definition, and its revision, as before)."""
        exclude = set(READ_ONLY_FIELDS) | (set() if self.MaintenancePeriods else {PERIODS})
        return self.model_dump(mode="json", exclude=exclude)

    @classmethod
    def redact(cls, definition: dict[str, Any]) -> dict[str, Any]:
        """The definition as GET shows it: write-only secrets as `******` (shared.secrets)."""
        return secrets.redact(definition)

    @classmethod
    def keep_secrets(cls, new: dict[str, Any], old: dict[str, Any], patch: bool = False) -> None:
        """Secrets sent back as `******` or left out keep their stored values while their URL
        points where it did (shared.secrets); `patch`: fields left out stay as stored."""
        secrets.keep(new, old, patch)


TlsVersionName = Literal[
    "Tls13",
    "Tls12",
    "Tls11",
    "Tls10",
    "Tls12_Tls11",
    "Tls11_Tls10",
    "Tls12_Tls11_Tls10",
    "Tls12_Tls11_Tls10_WithFallback",
]
PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
PEM_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.+?-----END [A-Z ]*PRIVATE KEY-----", re.S)


class HttpMonitor(MonitorBase):
    type_names = ("Http", "Https")

    MonitorType: Literal["Http", "Https"]
    Url: Annotated[str, Field(min_length=1, max_length=4096)]
    HttpMethod: Literal["Get", "Post", "Put", "Patch", "Delete", "Head", "Options"] = "Get"
    RequestHeaders: list[RequestHeader] = Field(default_factory=list)
    RequestBody: str = ""
    UserAgent: str = ""
    AuthenticationType: Literal["None", "Basic", "NTLM", "Digest"] = "None"
    Username: str = Field(default="", validate_default=True)
    Password: str = ""
    CheckCertificateErrors: bool = True
    IpVersion: Literal["IpV4", "IpV6"] | None = None
    HttpVersion: Literal["Negotiate", "Http1_1", "Http2", "Http3"] = "Negotiate"
    TlsVersion: TlsVersionName | None = None
    # Picket: a client certificate (PEM) and its key (PEM, write-only), until the Vault exists
    ClientCertificate: str = ""
    ClientCertificateKey: str = ""
    ErrorConditions: list[ErrorCondition] = Field(default_factory=list)

    @field_validator("Password")
    @classmethod
    def _password_not_mask(cls, password: str) -> str:
        return secrets.not_mask(password)

    @field_validator("Username")
    @classmethod
    def _user_for_auth(cls, username: str, info: ValidationInfo) -> str:
        if ":" in username:
            raise ValueError("must not contain ':'")
        auth = info.data.get("AuthenticationType", "None")
        if auth != "None" and not username:
            raise ValueError(f"is required with AuthenticationType {auth}")
        return username

    @field_validator("ClientCertificate")
    @classmethod
    def _certificate(cls, pem: str) -> str:
        if pem and not PEM_CERTIFICATE.search(pem):
            raise ValueError("must be a PEM certificate (-----BEGIN CERTIFICATE-----)")
        return pem

    @field_validator("ClientCertificateKey")
    @classmethod
    def _key(cls, pem: str, info: ValidationInfo) -> str:
        if pem and not PEM_KEY.search(pem):
            raise ValueError("must be a PEM private key (-----BEGIN PRIVATE KEY-----)")
        if pem and not info.data.get("ClientCertificate"):
            raise ValueError("needs ClientCertificate too")
        return pem

    @field_validator("Url")
    @classmethod
    def _url_matches_type(cls, url: str, info: ValidationInfo) -> str:
        monitor_type = info.data.get("MonitorType", "Http")
        scheme = "https" if monitor_type == "Https" else "http"
        match = re.fullmatch(r"(?i)(https?)://([^/?#\s]+)[^\s]*", url)
        if match is None:
            raise ValueError(f"must be an absolute {scheme}:// URL")
        if match.group(1).lower() != scheme:
            raise ValueError(f"a {monitor_type} monitor needs a {scheme}:// URL")
        return secrets.not_masked_url(url)


HOST_PATTERN = re.compile(
    r"^(\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]+|[A-Za-z0-9_.-]{1,253})$"
)


def _host(value: str) -> str:
    text = value.strip()
    if not text or not HOST_PATTERN.fullmatch(text):
        raise ValueError("must be a host name or an IP address")
    return text.strip("[]")


HostName = Annotated[str, AfterValidator(_host)]

DnsQueryName = Literal[
    "ARecord",
    "AaaaRecord",
    "CnameRecord",
    "MxRecord",
    "NsRecord",
    "TxtRecord",
    "SoaRecord",
    "SrvRecord",
    "CaaRecord",
]


class DnsMonitor(MonitorBase):
    type_names = ("DNS",)

    MonitorType: Literal["DNS"]
    DnsQuery: DnsQueryName = "ARecord"
    DnsTestValue: Annotated[str, Field(min_length=1, max_length=253)]  # the name to look up
    DnsServer: str = ""  # host or host:port; empty: the agent's system resolver
    DnsExpectedResult: str = ""  # passes when the answer set contains it
    IpVersion: Literal["IpV4", "IpV6"] | None = None  # to reach the DnsServer

    @field_validator("DnsServer")
    @classmethod
    def _server(cls, value: str) -> str:
        if value.strip():
            host, _port = split_host_port(value, 53)
            _host(host)
        return value.strip()


class ConnectMonitor(MonitorBase):
    type_names = ("Connect",)

    MonitorType: Literal["Connect"]
    NetworkAddress: HostName
    Port: Annotated[int, Field(ge=1, le=65535)]
    IpVersion: Literal["IpV4", "IpV6"] | None = None
    SendString: str = ""  # Picket: sent once connected ("\r\n" escapes allowed as is)
    ExpectString: str = ""  # Picket: must appear in what the server sends back


class CertificateMonitor(MonitorBase):
    type_names = ("Certificate",)

    MonitorType: Literal["Certificate"]
    Url: Annotated[str, Field(min_length=1, max_length=4096)]  # https://host[:port]
    IpVersion: Literal["IpV4", "IpV6"] | None = None
    CheckCertificateErrors: bool = True  # chain and host name
    CertificateExpirationWarningDays: Annotated[int, Field(ge=0, le=3650)] = 30
    CertificateName: str = ""
    CertificateOrganization: str = ""
    CertificateOrganizationalUnit: str = ""
    CertificateSerialNumber: str = ""
    CertificateFingerprint: str = ""
    CertificateIssuerName: str = ""
    CertificateIssuerCompanyName: str = ""
    CertificateIssuerOrganizationalUnit: str = ""

    @field_validator("Url")
    @classmethod
    def _https(cls, url: str) -> str:
        if not re.fullmatch(r"(?i)https://[^/?#\s]+[^\s]*", url):
            raise ValueError("must be an https:// URL")
        return url


class PingMonitor(MonitorBase):
    type_names = ("Ping",)

    MonitorType: Literal["Ping"]
    NetworkAddress: HostName
    IpVersion: Literal["IpV4", "IpV6"] | None = None
    PingCount: Annotated[int, Field(ge=1, le=20)] = 3  # Picket


class MultiStepApiMonitor(MonitorBase):
    type_names = ("MultiStepApi",)

    MonitorType: Literal["MultiStepApi"]
    MsaSteps: list[MsaStep] = Field(default_factory=list)
    PredefinedVariables: list[PredefinedVariable] = Field(default_factory=list)
    UserDefinedFunctions: list[UserDefinedFunction] = Field(default_factory=list)
    MultiStepApiTransactionScript: str = Field(default="", validate_default=True)

    @field_validator("MultiStepApiTransactionScript")
    @classmethod
    def _script(cls, text: str, info: ValidationInfo) -> str:
        if text.strip():
            if info.data.get("MsaSteps"):
                raise ValueError("give MsaSteps or MultiStepApiTransactionScript, not both")
            script = parse_script(text, info.context)
            if not script.MsaSteps:
                raise ValueError("MsaSteps: at least one step is needed")
        elif not info.data.get("MsaSteps"):
            raise ValueError("give MsaSteps or MultiStepApiTransactionScript: no step found")
        return text

    @property
    def script(self) -> MsaScript:
        if self.MultiStepApiTransactionScript.strip():
            return parse_script(self.MultiStepApiTransactionScript)
        return MsaScript(
            MsaSteps=self.MsaSteps,
            PredefinedVariables=self.PredefinedVariables,
            UserDefinedFunctions=self.UserDefinedFunctions,
        )


_MODELS: Registry[type[MonitorBase]] = Registry("monitor type")


def register(model: type[MonitorBase]) -> None:
    _MODELS.register(model.type_names, model)


def model_for(monitor_type: str) -> type[MonitorBase] | None:
    return _MODELS.get(monitor_type)


def monitor_types() -> list[str]:
    return _MODELS.names()


for _model in (
    HttpMonitor,
    DnsMonitor,
    ConnectMonitor,
    CertificateMonitor,
    PingMonitor,
    MultiStepApiMonitor,
):
    register(_model)
