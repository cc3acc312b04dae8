"""The sign-in form; Flask-WTF adds and checks its CSRF token."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import HiddenField, PasswordField, StringField
from wtforms.validators import InputRequired, Length

# Longer input cannot be a valid username or bcrypt password; refusing it early
# reveals nothing about which users exist.
MAX_FIELD_LENGTH = 256


class SignInForm(FlaskForm):
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
    # Carried through the round trip; checked again on submit, never trusted from the form.
    return_uri = HiddenField()
    response_type = HiddenField()
