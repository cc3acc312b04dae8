"""The sign-in forms; Flask-WTF adds and checks their CSRF token."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import HiddenField, PasswordField, StringField
from wtforms.validators import InputRequired, Length

# Longer input cannot be a valid username or bcrypt password; refusing it early
# reveals nothing about which users exist.
MAX_FIELD_LENGTH = 256


class CredentialsForm(FlaskForm):
    """Username and password: the OpenID Connect provider's sign-in form, whose own URL's
    query carries the rest."""

    username = StringField(
        "Username",
        validators=[InputRequired(), Length(max=MAX_FIELD_LENGTH)],
        render_kw={"autocomplete": "username", "autocapitalize": "none", "spellcheck": "false"},
    )
    password = PasswordField(
        "Password",
        validators=[InputRequired(), Length(max=MAX_FIELD_LENGTH)],
        render_kw={"autocomplete": "current-password"},
    )


class SignInForm(CredentialsForm):
    """The zhiva viewer's sign-in form."""

    # Carried through the round trip; checked again on submit, never trusted from the form.
    return_uri = HiddenField()
    response_type = HiddenField()


class ConfirmForm(FlaskForm):
    """A CSRF token behind buttons (logout, a device's approval); the button names the choice."""

    user_code = HiddenField()


class DeviceCodeForm(FlaskForm):
    user_code = StringField(
        "Code shown by the device",
        validators=[InputRequired(), Length(max=32)],
        render_kw={"autocomplete": "off", "autocapitalize": "characters", "spellcheck": "false"},
    )
