"""Endpoint credentials are stored as given and answered masked."""

from __future__ import annotations

import copy

from broker.auth import is_secret_name, mask_subscription, mask_uri


def test_userinfo_and_secret_query_parameters_are_masked() -> None:
    assert (
        mask_uri("https://komae:p%40ss@hooks.example/notify") == "https://***@hooks.example/notify"
    )
    assert (
        mask_uri("mqtt://iot:秘密@127.0.0.1:1883/狛江/aed") == "mqtt://***@127.0.0.1:1883/狛江/aed"
    )
    assert (
        mask_uri("https://hooks.example/n?token=abc&city=狛江市&api_key=x")
        == "https://hooks.example/n?token=***&city=%E7%8B%9B%E6%B1%9F%E5%B8%82&api_key=***"
    )
    plain = "http://127.0.0.1:8080/notify?city=狛江市"
    assert mask_uri(plain) == plain
    assert mask_uri("http://[::1") == "***"


def test_secret_names() -> None:
    for name in (
        "Authorization",
        "X-Auth-Token",
        "x-api-key",
        "apikey",
        "client_secret",
        "password",
        "Cookie",
        "MQTT-Password",
    ):
        assert is_secret_name(name), name
    for name in ("Content-Type", "Accept", "説明", "MQTT-QoS", "Link"):
        assert not is_secret_name(name), name


def test_subscriptions_are_answered_masked_and_the_stored_copy_kept() -> None:
    stored = {
        "id": "urn:ngsi-ld:Subscription:狛江-AED",
        "type": "Subscription",
        "notification": {
            "endpoint": {
                "uri": "https://komae:pw@hooks.example/aed",
                "receiverInfo": [
                    {"key": "Authorization", "value": "Bearer abc.def.ghi"},
                    {"key": "X-Auth-Token", "value": "tok"},
                    {"key": "説明", "value": "狛江市のAED"},
                ],
                "notifierInfo": [{"key": "MQTT-QoS", "value": "1"}],
            }
        },
    }
    before = copy.deepcopy(stored)
    shown = mask_subscription(stored)
    assert stored == before
    endpoint = shown["notification"]["endpoint"]
    assert endpoint["uri"] == "https://***@hooks.example/aed"
    assert endpoint["receiverInfo"] == [
        {"key": "Authorization", "value": "***"},
        {"key": "X-Auth-Token", "value": "***"},
        {"key": "説明", "value": "狛江市のAED"},
    ]
    assert endpoint["notifierInfo"] == [{"key": "MQTT-QoS", "value": "1"}]


def test_v2_subscriptions_are_masked_too() -> None:
    v2 = {
        "notification": {
            "httpCustom": {
                "url": "https://u:p@hooks.example/v2",
                "headers": {"Authorization": "Basic dTpw", "Fiware-Service": "komae"},
                "qs": {"apikey": "k", "type": "AED"},
            },
            "mqtt": {"url": "mqtt://127.0.0.1:1883", "topic": "t", "user": "u", "passwd": "p"},
        }
    }
    shown = mask_subscription(v2)["notification"]
    assert shown["httpCustom"]["url"] == "https://***@hooks.example/v2"
    assert shown["httpCustom"]["headers"] == {"Authorization": "***", "Fiware-Service": "komae"}
    assert shown["httpCustom"]["qs"] == {"apikey": "***", "type": "AED"}
    assert shown["mqtt"]["passwd"] == "***"
    assert shown["mqtt"]["user"] == "u"
