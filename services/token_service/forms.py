"""The /auth/token page's forms (Flask-WTF: each carries its CSRF token)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import BooleanField, PasswordField, StringField, SubmitField
from wtforms.validators import DataRequired, EqualTo, Length, ValidationError

from services.domain.names import MAX_NAME_LENGTH, normalise_name, normalise_username
from services.domain.passwords import weak_password_reason


def _valid_name(_form: FlaskForm, field: StringField) -> None:
    if normalise_name(field.data) is None:
        raise ValidationError("Name not valid")


def _valid_username(_form: FlaskForm, field: StringField) -> None:
    if normalise_username(field.data) is None:
        raise ValidationError(
            "username not valid: use lower-case letters, digits and . _ @ - (up to 64)"
        )


def _strong(_form: FlaskForm, field: PasswordField) -> None:
    reason = weak_password_reason(field.data or "")
    if reason:
        raise ValidationError(reason)


class DetailsForm(FlaskForm):
    """Step 1: whom the token is for, and the admin password."""

    name = StringField(
        "Token owner name",
        validators=[
            DataRequired("Please enter who should receive the token"),
            Length(max=MAX_NAME_LENGTH),
            _valid_name,
        ],
    )
    username = StringField(
        "Token owner username",
        validators=[DataRequired("Please enter a username"), Length(max=64), _valid_username],
    )
    can_edit = BooleanField("Can edit PACS resources?")
    admin_password = PasswordField(
        "Admin password", validators=[DataRequired("Please enter the admin password")]
    )
    submit = SubmitField("Continue")


class ConfirmForm(FlaskForm):
    """Step 2: confirm creating or overwriting the user, with the user's new password."""

    user_password = PasswordField(
        "User password", validators=[DataRequired("Please enter the user's password"), _strong]
    )
    user_password_again = PasswordField(
        "User password again",
        validators=[
            DataRequired("Please repeat the password"),
            EqualTo("user_password", "The two passwords differ"),
        ],
    )
    submit = SubmitField("Confirm")
