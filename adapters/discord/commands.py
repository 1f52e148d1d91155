"""The slash commands: /video with typed options, and /video-status, -cancel, -usage, -help.

/video's options are Discord-native fields (an attachment picker, choices for aspect and fps,
ranged integers). The prompt field is read by the same grammar as a mention, so options typed
there (``a fox --duration 8``) count too; ``parse_request`` merges both and refuses a field and
a typed option that disagree. The rules and their messages are the grammar's, not a second copy.
"""

from __future__ import annotations

from discord import Attachment, Interaction, app_commands

from adapters.discord import render
from adapters.discord.interactions import answer_privately, bot_of, start_job
from adapters.discord.origins import PLATFORM, image_from_attachment, origin_from_interaction
from adapters.discord.views import cancel_text
from bot import Job
from bot.errors import JobNotFound
from bot.grammar import ASPECTS, MAX_SEED, parse_request
from bot.models import Origin
from bot.service import JobService

MAX_DURATION_S = 60
"""The widest ``max_duration_s`` the limits file accepts; the limit in force is checked by the core."""

_SHAPES = {"16:9": "landscape", "9:16": "portrait", "1:1": "square"}
_ASPECT_CHOICES = [
    app_commands.Choice(name=f"{name} {_SHAPES.get(name, '')} ({size})", value=name) for name, size in ASPECTS.items()
]
_FPS_CHOICES = [app_commands.Choice(name="16 fps", value=16), app_commands.Choice(name="24 fps (smoother)", value=24)]
_SHOTS_CHOICES = [
    app_commands.Choice(name="one shot", value="single"),
    app_commands.Choice(name="several shots (models that make them)", value="multi"),
]


def build_commands() -> list[app_commands.Command]:
    """Fresh command objects for one client's tree (a tree keeps state on the commands it holds)."""

    @app_commands.command(name="video", description="Make a short video from a description, or animate an image")
    @app_commands.guild_only()
    @app_commands.describe(
        prompt="What the video shows; options may follow, e.g. a fox running --duration 8",
        image="An image to animate (PNG, JPEG, WebP, GIF or BMP)",
        end_image="An image the video ends on (with image; same orientation)",
        duration="Seconds of video (default 5)",
        aspect="Shape of the video (default 16:9, or the image's shape)",
        resolution="480p, 720p or 1080p (with the shape), or an exact size such as 832x480",
        fps="Frames per second (default 16)",
        seed="Repeat an earlier result exactly",
        negative="What to keep out of the video",
        hq="Higher quality, slower",
        loop="End on the first frame, so the video plays seamlessly on repeat",
        shots="One shot, or several shots in one clip",
    )
    @app_commands.choices(aspect=_ASPECT_CHOICES)
    @app_commands.choices(fps=_FPS_CHOICES)
    @app_commands.choices(shots=_SHOTS_CHOICES)
    async def video(
        interaction: Interaction,
        prompt: str,
        image: Attachment | None = None,
        duration: app_commands.Range[int, 1, MAX_DURATION_S] | None = None,
        aspect: app_commands.Choice[str] | None = None,
        resolution: app_commands.Range[str, 2, 16] | None = None,
        fps: app_commands.Choice[int] | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        negative: str | None = None,
        hq: bool = False,
        end_image: Attachment | None = None,
        loop: bool = False,
        shots: app_commands.Choice[str] | None = None,
    ) -> None:
        bot = bot_of(interaction)

        async def create(origin: Origin) -> Job:
            limits = bot.service.limits.current()
            picture = await image_from_attachment(image, limits) if image is not None else None
            last = await image_from_attachment(end_image, limits) if end_image is not None else None
            request = parse_request(
                prompt,
                image=picture,
                end_image=last,
                loop=loop,
                shots=shots.value if shots else None,
                duration=duration,
                aspect=aspect.value if aspect else None,
                resolution=resolution,
                fps=fps.value if fps else None,
                seed=seed,
                negative=negative,
                hq=hq,
            )
            return await bot.service.submit(request, origin, dedup_key=f"discord:interaction:{interaction.id}")

        await start_job(interaction, create)

    @app_commands.command(name="video-status", description="Show your videos in progress, or one job")
    @app_commands.guild_only()
    @app_commands.describe(job="A job number (leave out to list your videos in progress)")
    async def video_status(interaction: Interaction, job: int | None = None) -> None:
        service = bot_of(interaction).service

        async def produce(origin: Origin) -> str:
            if job is None:
                return render.active_jobs(await service.active_jobs(origin))
            return render.job_status(await _job_here(service, job, origin))

        await answer_privately(interaction, produce)

    @app_commands.command(name="video-cancel", description="Stop one of your videos")
    @app_commands.guild_only()
    @app_commands.describe(job="The job number")
    async def video_cancel(interaction: Interaction, job: int) -> None:
        service = bot_of(interaction).service
        await answer_privately(interaction, lambda origin: cancel_text(service, job, origin))

    @app_commands.command(name="video-usage", description="How many videos you have made, and your limits")
    @app_commands.guild_only()
    async def video_usage(interaction: Interaction) -> None:
        service = bot_of(interaction).service
        await answer_privately(interaction, service.usage_text)

    @app_commands.command(name="video-help", description="How to ask for a video")
    async def video_help(interaction: Interaction) -> None:
        service = bot_of(interaction).service

        async def text(origin: Origin) -> str:
            return render.help_text(service.help_text(origin))

        await answer_privately(interaction, text)

    video_status.autocomplete("job")(_active_job_choices)
    video_cancel.autocomplete("job")(_active_job_choices)
    return [video, video_status, video_cancel, video_usage, video_help]


async def _job_here(service: JobService, job_id: int, origin: Origin) -> Job:
    """A job of this server; another server's jobs are not even acknowledged to exist."""
    job = await service.status(job_id)
    if job.platform != PLATFORM or job.workspace_id != origin.workspace_id:
        raise JobNotFound(f"There is no job #{job_id}.")
    return job


async def _active_job_choices(interaction: Interaction, current: str) -> list[app_commands.Choice[int]]:
    """Suggest the asker's unfinished jobs, matching the digits typed so far."""
    bot = bot_of(interaction)
    origin = origin_from_interaction(interaction, bot.service.limits.current())
    jobs = await bot.service.active_jobs(origin)
    return [
        app_commands.Choice(name=render.shorten(f"#{j.id} {j.state} · {j.prompt}", 100), value=j.id or 0)
        for j in jobs
        if current.strip("#") in str(j.id)
    ][:25]
