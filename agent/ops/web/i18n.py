"""The page's words in English and Simplified Chinese, and which one a browser asks for.

Chinese here is the wording integrators see on HMI and SCADA screens (在线/离线, 缓冲区, 轮询),
not a word-for-word rendering of the English.
"""

# Full-width punctuation is correct Chinese typography, not a look-alike of ASCII.
# ruff: noqa: RUF001

from __future__ import annotations

LANGUAGES = ("en", "zh-CN")

TEXT: dict[str, dict[str, str]] = {
    "en": {
        "title": "Gateway status",
        "skip": "Skip to devices",
        "nav": "Sections",
        "overview": "Overview",
        "devices": "Devices",
        "values": "Last values",
        "errors": "Recent warnings and errors",
        "no_errors": "No warnings since the agent started.",
        "no_devices": "No devices configured.",
        "no_values": "No values yet.",
        "updated": "Updated",
        "refresh": "This page refreshes every {n} seconds.",
        "gateway": "Gateway",
        "version": "Version",
        "uptime": "Running for",
        "config": "Config file",
        "reloads": "Reloads",
        "ready": "Ready",
        "yes": "yes",
        "no": "no",
        "broker": "Broker",
        "destination": "Destination {name}",
        "output_text": "{format}, to send: {n} batches, oldest {age}, dropped: {d}",
        "connected": "connected",
        "disconnected": "disconnected, buffering",
        "buffer": "Buffer",
        "buffer_text": "{batches} batches, {size} of {max}, oldest {age}",
        "dropped": "dropped since created: {n}",
        "quarantined": "quarantined (the format cannot pack them): {n}",
        "clock": "System clock",
        "clock_ok": "synchronised",
        "clock_bad": "NOT synchronised: timestamps may be wrong",
        "clock_unknown": "synchronisation unknown",
        "clamped": "timestamps corrected (clock went back): {n}",
        "device": "Device",
        "driver": "Driver",
        "state": "State",
        "reason": "Reason",
        "last_poll": "Last poll",
        "interval": "Poll interval",
        "error_rate": "Error rate",
        "error_rate_help": "share of the last 100 batches with a tag not good",
        "tag": "Tag",
        "value": "Value",
        "unit": "Unit",
        "quality": "Quality",
        "time": "Time",
        "level": "Level",
        "message": "Message",
        "state_up": "up",
        "state_down": "down",
        "state_starting": "starting",
        "quality_good": "good",
        "quality_bad": "bad",
        "quality_uncertain": "uncertain",
        "ago": "{t} ago",
        "never": "never",
        "links": "Machine-readable",
        "problems": "Not ready because",
        "lang_switch": "中文",
        "colon": ": ",
        "lp": " (",
        "rp": ")",
        "sep": "; ",
        "full_stop": ". ",
        "devices_caption": "Devices, their state and last poll",
    },
    "zh-CN": {
        "title": "网关状态",
        "skip": "跳到设备列表",
        "nav": "页面导航",
        "overview": "概览",
        "devices": "设备",
        "values": "最新数据",
        "errors": "最近的警告和错误",
        "no_errors": "代理启动以来没有警告。",
        "no_devices": "未配置设备。",
        "no_values": "暂无数据。",
        "updated": "更新时间",
        "refresh": "本页每 {n} 秒自动刷新。",
        "gateway": "网关",
        "version": "版本",
        "uptime": "已运行",
        "config": "配置文件",
        "reloads": "重新加载次数",
        "ready": "就绪",
        "yes": "是",
        "no": "否",
        "broker": "MQTT 服务器",
        "destination": "目的地 {name}",
        "output_text": "{format}，待发送 {n} 批，最早 {age}，已丢弃 {d} 批",
        "connected": "已连接",
        "disconnected": "未连接，数据缓存中",
        "buffer": "缓冲区",
        "buffer_text": "{batches} 批数据，占用 {size}（上限 {max}），最早一批 {age}",
        "dropped": "自创建以来丢弃：{n} 批",
        "quarantined": "已隔离（格式无法打包）：{n} 批",
        "clock": "系统时钟",
        "clock_ok": "已同步",
        "clock_bad": "未同步：时间戳可能不准确",
        "clock_unknown": "无法确定是否同步",
        "clamped": "已修正的时间戳（时钟回拨）：{n}",
        "device": "设备",
        "driver": "驱动",
        "state": "状态",
        "reason": "原因",
        "last_poll": "最近采集",
        "interval": "采集周期",
        "error_rate": "错误率",
        "error_rate_help": "最近 100 批数据中含异常点位的比例",
        "tag": "点位",
        "value": "数值",
        "unit": "单位",
        "quality": "质量",
        "time": "时间",
        "level": "级别",
        "message": "内容",
        "state_up": "在线",
        "state_down": "离线",
        "state_starting": "启动中",
        "quality_good": "正常",
        "quality_bad": "异常",
        "quality_uncertain": "不确定",
        "ago": "{t}前",
        "never": "从未",
        "links": "机器可读接口",
        "problems": "未就绪原因",
        "lang_switch": "English",
        "colon": "：",
        "lp": "（",
        "rp": "）",
        "sep": "；",
        "full_stop": "。",
        "devices_caption": "设备状态与最近采集",
    },
}

#: Units of elapsed time, for "3 s ago" / "3 秒前".
DURATION_UNITS: dict[str, tuple[str, str, str, str, str]] = {
    "en": (" ms", " s", " min", " h", " d"),
    "zh-CN": (" 毫秒", " 秒", " 分钟", " 小时", " 天"),
}


def pick_language(accept_language: str) -> str:
    """``en`` or ``zh-CN`` from an ``Accept-Language`` header (or a bare tag), by q-value.

    Any Chinese tag (``zh``, ``zh-CN``, ``zh-Hans``, ``zh-TW``...) gets Simplified Chinese: it is
    the only Chinese the page has, and readers of Traditional read it far better than English.
    """
    best, best_q = "en", -1.0
    for position, item in enumerate(accept_language.split(",")):
        parts = item.strip().split(";")
        tag = parts[0].strip().lower()
        q = 1.0
        for param in parts[1:]:
            key, _, value = param.strip().partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q <= 0 or not tag:
            continue
        lang = "zh-CN" if tag == "zh" or tag.startswith("zh-") else "en" if tag[:2] == "en" else ""
        # Earlier entries win ties, as browsers list preferences in order.
        if lang and q - position * 1e-6 > best_q:
            best, best_q = lang, q - position * 1e-6
    return best
