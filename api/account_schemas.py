"""Marshmallow schemas of the accounts API: tenants, users, members and tokens, with examples
that the docs' "Try it out" sends as they are."""

from flask_smorest.error_handler import ErrorSchema
from marshmallow import Schema, fields, validate

from api.schemas import FullMatch, JsonBoolean, PageArgsSchema, list_response, single_response
from provisioning.accounts.checks import ONE_LINE, ONE_LINE_NOT_BLANK
from provisioning.accounts.registry import (
    MAX_EMAIL_LENGTH,
    MAX_TENANT_NAME_LENGTH,
    MAX_TOKEN_LIFETIME,
    MAX_TOKEN_NAME_LENGTH,
    RESERVED_SLUGS,
)
from provisioning.enums import Role, Scope, TenantStatus
from provisioning.platform.identifiers import EMAIL, SLUG, UUID

SCOPE_VALUES = [scope.value for scope in Scope]
# What every view of these blueprints may answer besides its success: said once, shown on each.
UNAUTHENTICATED = "No token, or one that is unknown, expired or revoked, or its user is disabled"


def tenant_in_path() -> list[dict]:
    """The ``{tenant}`` of a route, documented (a new dict each time: flask-smorest completes it in place)."""
    return [
        {
            "in": "path",
            "name": "tenant",
            "description": "The tenant, by slug or id",
            "schema": {"type": "string", "pattern": f"{SLUG.pattern.pattern}|{UUID.pattern.pattern}"},
        }
    ]


# The refusal every platform operation documents.
NOT_OPERATOR = {403: "The caller is not a platform operator, or the token lacks the scope platform"}


def refusals(blp, described: dict[int, str]):
    """A view's decorator documenting each error status it may answer, with what it means."""

    def decorate(view):
        for status, description in described.items():
            view = blp.alt_response(status, schema=ErrorSchema, description=description)(view)
        return blp.alt_response(401, schema=ErrorSchema, description=UNAUTHENTICATED)(view)

    return decorate


class PlatformTenantSchema(Schema):
    id = fields.UUID()
    slug = fields.String(metadata={"example": "acme"})
    name = fields.String(metadata={"example": "Acme Ltd"})
    status = fields.Enum(TenantStatus, by_value=True, metadata={"description": "Changes only through jobs"})
    server_id = fields.UUID(allow_none=True, metadata={"description": "The bench server its site is on; null: none yet"})
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


TENANT_NAME = fields.String(
    required=True,
    validate=[validate.Length(min=1, max=MAX_TENANT_NAME_LENGTH), FullMatch(ONE_LINE_NOT_BLANK)],
    metadata={"example": "Acme Ltd", "description": "The customer's display name"},
)


class TenantCreateSchema(Schema):
    slug = fields.String(
        required=True,
        validate=[FullMatch(SLUG), validate.NoneOf(sorted(RESERVED_SLUGS), error="{input} is reserved")],
        metadata={"example": "acme", "description": "Becomes the first label of its site's name; never changes"},
    )
    name = TENANT_NAME


class TenantUpdateSchema(Schema):
    name = TENANT_NAME


class TenantQueryArgsSchema(PageArgsSchema):
    status = fields.Enum(TenantStatus, by_value=True)


class UserSchema(Schema):
    id = fields.UUID()
    email = fields.String(metadata={"example": "ops@example.com"})
    is_superuser = fields.Boolean(metadata={"description": "A platform operator"})
    created_at = fields.DateTime()
    disabled_at = fields.DateTime(allow_none=True, metadata={"description": "When it was disabled; null: it is not"})


EMAIL_ADDRESS = fields.String(
    required=True,
    validate=[validate.Length(max=MAX_EMAIL_LENGTH), FullMatch(EMAIL)],
    metadata={"example": "new.member@example.com", "description": "Compared in lowercase"},
)


class UserCreateSchema(Schema):
    email = EMAIL_ADDRESS
    is_superuser = JsonBoolean(load_default=False, metadata={"description": "A platform operator", "default": False})


class MemberSchema(Schema):
    user_id = fields.UUID()
    email = fields.String(metadata={"example": "new.member@example.com"})
    role = fields.Enum(Role, by_value=True)
    created_at = fields.DateTime()


class MemberCreateSchema(Schema):
    email = EMAIL_ADDRESS
    role = fields.Enum(Role, by_value=True, required=True, metadata={"example": "member"})


class MemberUpdateSchema(Schema):
    role = fields.Enum(Role, by_value=True, required=True, metadata={"example": "admin"})


class TokenSchema(Schema):
    """A token as it is listed: never the token itself, which only its creation's answer shows."""

    id = fields.UUID()
    name = fields.String(metadata={"example": "portal"})
    prefix = fields.String(metadata={"description": "Its first characters, to tell it apart", "example": "erpx_AbC123"})
    user_id = fields.UUID()
    tenant_id = fields.UUID(allow_none=True, metadata={"description": "The one tenant it acts for; null: any of its user's"})
    scopes = fields.List(
        fields.String(metadata={"enum": SCOPE_VALUES}),
        allow_none=True,
        metadata={"description": "What it may do, within its user's role; null: made before scopes, all the role allows"},
    )
    created_at = fields.DateTime()
    expires_at = fields.DateTime(allow_none=True)
    last_used_at = fields.DateTime(allow_none=True)
    revoked_at = fields.DateTime(allow_none=True)


class NewTokenSchema(TokenSchema):
    token = fields.String(metadata={"description": "The bearer token: shown this once, never stored or shown again"})


class TokenCreateSchema(Schema):
    name = fields.String(
        load_default="",
        validate=[validate.Length(max=MAX_TOKEN_NAME_LENGTH), FullMatch(ONE_LINE)],
        metadata={"example": "portal", "description": "What it is for"},
    )
    scopes = fields.List(
        fields.Enum(Scope, by_value=True),
        validate=validate.Length(min=1, max=len(Scope)),
        metadata={
            "example": ["read"],
            "description": "read, write, platform (superusers only); default: all the user's role allows. A scope "
            "the role does not allow is a 422",
        },
    )
    expires_in_days = fields.Integer(
        validate=validate.Range(min=1, max=MAX_TOKEN_LIFETIME.days),
        metadata={"example": 30, "description": "Default and most: TOKEN_MAX_LIFETIME_DAYS (a longer lifetime is a 422)"},
    )


class TenantTokenCreateSchema(TokenCreateSchema):
    user_id = fields.UUID(
        required=True,
        metadata={"example": "7d4f3c2e-5b1a-4e8f-9c6d-2a1b0e9f8d7c", "description": "The member it acts as"},
    )


class RevokedTokensSchema(Schema):
    revoked = fields.Integer(metadata={"description": "How many usable tokens were revoked"})


PlatformTenantResponseSchema = single_response(PlatformTenantSchema, "PlatformTenantResponse")
PlatformTenantListResponseSchema = list_response(PlatformTenantSchema, "PlatformTenantListResponse")
UserResponseSchema = single_response(UserSchema, "UserResponse")
UserListResponseSchema = list_response(UserSchema, "UserListResponse")
MemberResponseSchema = single_response(MemberSchema, "MemberResponse")
MemberListResponseSchema = list_response(MemberSchema, "MemberListResponse")
TokenResponseSchema = single_response(TokenSchema, "TokenResponse")
TokenListResponseSchema = list_response(TokenSchema, "TokenListResponse")
NewTokenResponseSchema = single_response(NewTokenSchema, "NewTokenResponse")
RevokedTokensResponseSchema = single_response(RevokedTokensSchema, "RevokedTokensResponse")
