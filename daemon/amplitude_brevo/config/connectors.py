"""Connector sections: the Amplitude project and the Brevo account (keys, hosts, plan)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from amplitude_brevo.secrets import Secret

from .errors import located
from .fields import ListId, Section, Url, empty_secret_to_none, lower, not_bool, secrets_wanted

AMPLITUDE_HOSTS = {
    "US": {"ingest_url": "https://api2.amplitude.com", "api_url": "https://amplitude.com"},
    "EU": {"ingest_url": "https://api.eu.amplitude.com", "api_url": "https://analytics.eu.amplitude.com"},
}
BREVO_API_URL = "https://api.brevo.com/v3"


class AmplitudeConnector(Section):
    enabled: bool = True
    api_key: Secret | None = None
    secret_key: Secret | None = None
    data_center: Literal["US", "EU"] = "US"
    ingest_url: Url = AMPLITUDE_HOSTS["US"]["ingest_url"]
    api_url: Url = AMPLITUDE_HOSTS["US"]["api_url"]

    @classmethod
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        if isinstance(data.get("data_center"), str):
            data["data_center"] = data["data_center"].strip().upper()
        hosts = AMPLITUDE_HOSTS.get(data.get("data_center", "US"), AMPLITUDE_HOSTS["US"])
        for key, default in hosts.items():
            data.setdefault(key, default)
        return data

    _keys_none = field_validator("api_key", "secret_key", mode="before")(empty_secret_to_none)

    @model_validator(mode="after")
    def _keys_when_enabled(self, info: ValidationInfo) -> AmplitudeConnector:
        if self.enabled:
            # Without secrets wanted, a key written in the file but left empty (unset ${VAR}, unread
            # *_file) is fine; a key not written at all is still a mistake in the file.
            wanted = secrets_wanted(info)
            missing = [
                name
                for name in ("api_key", "secret_key")
                if getattr(self, name) is None and (wanted or name not in self.model_fields_set)
            ]
            if missing:
                raise located(
                    *(((name,), "is required when connectors.amplitude.enabled is true") for name in missing)
                )
        return self


def _required_secret(value: Secret, info: ValidationInfo) -> Secret:
    if not value and secrets_wanted(info):
        raise ValueError("must not be empty")
    return value


class BrevoConnector(Section):
    api_key: Annotated[Secret, AfterValidator(_required_secret)]
    api_url: Url = BREVO_API_URL
    plan: Annotated[Literal["general", "advanced", "extended"], BeforeValidator(lower)] = "general"
    # Create property_mapping targets missing in Brevo, their type inferred from the values.
    create_attributes: bool = False
    # Events per /events/batch request (Brevo publishes no maximum); 1 sends every event to /events.
    events_batch_size: Annotated[int, BeforeValidator(not_bool), Field(ge=1, le=1000)] = 100
    # Contacts per POST /contacts/batch request (Brevo's limit: 1000 per request).
    contacts_batch_size: Annotated[int, BeforeValidator(not_bool), Field(ge=1, le=1000)] = 100
    # New contacts in one batch at or above this go through POST /contacts/import, fewer through POST /contacts.
    contacts_import_min: Annotated[int, BeforeValidator(not_bool), Field(ge=1)] = 50
    # The list /contacts/import adds new contacts to (Brevo requires one); None: a list named "Amplitude users".
    import_list_id: ListId | None = None


class Connectors(Section):
    amplitude: AmplitudeConnector
    brevo: BrevoConnector
